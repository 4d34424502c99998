"""The relay: tails the binlog and publishes committed outbox events to Kafka.

Run it with ``python -m transactional_outbox.relay --help``, or embed it::

    relay = Relay(RelaySettings.from_env())   # or RelaySettings(kafka=KafkaConnection(...), ...)
    await relay.run()          # until relay.stop()
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ..kafka import KafkaConnection
from .position import BinlogPosition, StartPolicy

if TYPE_CHECKING:
    from .canary import CanarySettings
    from .config import RelaySettings
    from .pipeline import Relay

# Loaded on first use, so the binlog reader process (which imports only the
# source side) does not load SQLAlchemy, aiokafka and redis.
__getattr__ = lazy_attributes(
    __name__, {"RelaySettings": "config", "Relay": "pipeline", "CanarySettings": "canary"}
)


__all__ = [
    "BinlogPosition",
    "CanarySettings",
    "KafkaConnection",
    "Relay",
    "RelaySettings",
    "StartPolicy",
]
