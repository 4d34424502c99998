"""How far behind the binlog head, and the console script (no servers)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from transactional_outbox.relay.mysql.progress import bytes_behind
from transactional_outbox.relay.position import BinlogPosition
from transactional_outbox.relay.stats import describe

ROOT = Path(__file__).resolve().parent.parent
LOGS = [("mysql-bin.000001", 1000), ("mysql-bin.000002", 500), ("mysql-bin.000003", 300)]


@pytest.mark.parametrize(
    ("file", "pos", "expected"),
    [
        ("mysql-bin.000003", 300, 0),  # at the head: caught up
        ("mysql-bin.000003", 100, 200),
        ("mysql-bin.000002", 400, 100 + 300),
        ("mysql-bin.000001", 4, 996 + 500 + 300),
        ("mysql-bin.000000", 4, None),  # purged: unknown, not a guess
    ],
)
def test_bytes_behind(file: str, pos: int, expected: int | None) -> None:
    assert bytes_behind(BinlogPosition(file=file, pos=pos), LOGS) == expected


def test_describe() -> None:
    assert describe(0, 13.12) == "behind 0 B, last event 13.1s ago"
    assert describe(None, None) == "behind -, last event none yet"


def test_outbox_relay_console_script_names_main() -> None:
    from transactional_outbox.relay.__main__ import main

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["outbox-relay"].partition(":")
    assert (module, func) == ("transactional_outbox.relay.__main__", "main")
    with pytest.raises(SystemExit) as info:  # what the script runs
        main(["--help"])
    assert info.value.code == 0
