"""The relay: tails the binlog and publishes committed outbox events to Kafka.

Run it with ``python -m transactional_outbox.relay --help``, or embed it::

    relay = Relay(RelaySettings.from_env())
    await relay.run()          # until relay.stop()
"""

from .config import RelaySettings
from .pipeline import Relay
from .position import BinlogPosition, StartPolicy

__all__ = ["BinlogPosition", "Relay", "RelaySettings", "StartPolicy"]
