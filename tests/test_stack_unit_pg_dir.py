"""Where the dev stack's PostgreSQL lives (dev/outbox_dev/pg.py ``stack_pg_dir``).

PostgreSQL runs as the ``postgres`` OS user, which must pass through every folder
above its data directory. A checkout in a private folder (``mktemp -d`` makes one
0700) made ``./dev/test`` fail at ``initdb`` ("Permission denied"): the stack's
PostgreSQL then lives in the system's temporary folder, under a name derived from
the checkout, the same for start, stop and status.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from outbox_dev.pg import _reachable, stack_pg_dir


def test_a_checkout_in_a_private_folder_puts_postgresql_where_its_user_reaches() -> None:
    with tempfile.TemporaryDirectory() as private:  # 0700, as mktemp -d makes it
        state = Path(private) / "repo" / ".stack" / "postgres"
        assert not _reachable(state)
        where = stack_pg_dir(state)
        assert where.parent == Path(tempfile.gettempdir())
        assert _reachable(where / "data")
        assert stack_pg_dir(state) == where  # start, stop and status agree
        other = stack_pg_dir(Path(private) / "other" / ".stack" / "postgres")
        assert other != where  # two checkouts, two servers


def test_a_reachable_checkout_keeps_postgresql_in_its_stack_folder() -> None:
    state = Path(tempfile.gettempdir()) / "outbox-open" / ".stack" / "postgres"
    assert stack_pg_dir(state) == state
