"""``python -m transactional_outbox.relay``: the relay worker entry point."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..exceptions import (
    CheckpointError,
    ConfigurationError,
    OutboxError,
    PublishError,
)
from .logs import limit_library_logs

if TYPE_CHECKING:
    from .config import RelaySettings

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_CHECKPOINT = 3
EXIT_PUBLISH = 4

log = logging.getLogger("transactional_outbox.relay")

# The top-level modules of the ``relay`` extra (pyproject.toml). A plain install
# (``pip install transactional-outbox``) has none of them.
RELAY_EXTRA_MODULES = frozenset({"pymysql", "aiokafka", "redis", "prometheus_client"})


async def _run(settings: RelaySettings) -> None:
    from .pipeline import Relay

    relay = Relay(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    await relay.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse settings, run the relay, map the outcome to an exit code (see ``--help``)."""
    try:
        from .config import RelaySettings
        from .pipeline import Relay  # noqa: F401  (its dependencies checked before --help)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in RELAY_EXTRA_MODULES:
            raise
        print(
            f"configuration error: the relay needs the 'relay' extra ({missing} is not "
            "installed): pip install 'transactional-outbox[relay]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        settings = RelaySettings.from_cli(argv)
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    limit_library_logs()  # aiokafka logs each failed attempt: one line every 5 s at most
    try:
        asyncio.run(_run(settings))
    except ConfigurationError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    except CheckpointError as exc:
        log.error("cannot start from the checkpoint: %s", exc)
        return EXIT_CHECKPOINT
    except PublishError as exc:
        log.error("stopped: %s", exc)
        return EXIT_PUBLISH
    except OutboxError as exc:
        log.error("stopped: %s", exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        log.exception("relay failed")
        return EXIT_ERROR
    log.info("stopped cleanly")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
