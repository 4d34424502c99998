"""The relay: tails the binlog and publishes committed outbox events to Kafka.

Run it with ``python -m transactional_outbox.relay --help``, or embed it::

    relay = Relay(RelaySettings.from_env())
    await relay.run()          # until relay.stop()
"""

import importlib
from typing import TYPE_CHECKING, Any

from .position import BinlogPosition, StartPolicy

if TYPE_CHECKING:
    from .config import RelaySettings
    from .pipeline import Relay

# Loaded on first use, so the binlog reader process (which imports only the
# source side) does not load SQLAlchemy, aiokafka and redis.
_LAZY = {"RelaySettings": "config", "Relay": "pipeline"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["BinlogPosition", "Relay", "RelaySettings", "StartPolicy"]
