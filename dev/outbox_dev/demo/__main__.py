"""``python -m outbox_dev.demo [--once] [--restart-relay-midway] [--keep] [--summary-json P]``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from outbox_dev import demo
from outbox_dev.demo.driver import Demo


def main() -> int:
    assert demo.__doc__ is not None
    parser = argparse.ArgumentParser(prog="dev/demo", description=demo.__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="run the scenario once and exit")
    parser.add_argument(
        "--restart-relay-midway",
        action="store_true",
        help="stop the relay (SIGTERM) halfway, then restart it replaying from the start",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the databases, topic and Redis keys (checkpoint, lease)",
    )
    parser.add_argument("--summary-json", metavar="PATH", help="write the summary JSON here")
    return asyncio.run(Demo(parser.parse_args()).run())


if __name__ == "__main__":
    sys.exit(main())
