"""``python -m transactional_outbox.relay``: the relay worker entry point."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from ..exceptions import (
    CheckpointError,
    ConfigurationError,
    OutboxError,
    PublishError,
)
from .config import RelaySettings
from .logs import limit_library_logs
from .pipeline import Relay

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_CHECKPOINT = 3
EXIT_PUBLISH = 4

log = logging.getLogger("transactional_outbox.relay")


async def _run(settings: RelaySettings) -> None:
    relay = Relay(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    await relay.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse settings, run the relay, map the outcome to an exit code (see ``--help``)."""
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
