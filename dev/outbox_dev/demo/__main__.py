"""``python -m outbox_dev.demo [--database mysql|postgresql] [--outbox-mode table|message]
[--once] [--restart-relay-midway] [--keep] [--summary-json P]``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from outbox_dev import demo
from outbox_dev.demo.driver import Demo


def main() -> int:
    assert demo.__doc__ is not None
    parser = argparse.ArgumentParser(prog="dev/demo", description=demo.__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database",
        choices=("mysql", "postgresql"),
        default="mysql",
        help="the stack's database the demo runs on: MariaDB (binlog) or PostgreSQL"
        " (logical replication slot); default mysql",
    )
    parser.add_argument(
        "--outbox-mode",
        choices=("table", "message"),
        default="table",
        help="how the api-server writes its events: outbox rows (table, default) or, on"
        " PostgreSQL only, logical decoding messages with no table (message)",
    )
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
    args = parser.parse_args()
    if args.outbox_mode == "message" and args.database != "postgresql":
        parser.error("--outbox-mode message needs --database postgresql")
    return asyncio.run(Demo(args).run())


if __name__ == "__main__":
    sys.exit(main())
