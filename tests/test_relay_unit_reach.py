"""Which binlog and replication filters keep outbox rows out of the binlog the relay reads."""

from __future__ import annotations

import pytest

from transactional_outbox.relay.mysql.reach import (
    ReplicationFilters,
    binlog_excludes,
    replication_excludes,
    wild_match,
)


@pytest.mark.parametrize(
    ("do", "ignore", "expected"),
    [
        ((), (), None),
        (("shop",), (), None),
        (("billing",), (), "binlog_do_db"),
        # With a do-list the ignore-list is not consulted.
        (("shop",), ("shop",), None),
        ((), ("shop",), "binlog_ignore_db"),
        ((), ("billing", "other"), None),
        # Names are compared exactly (Linux, lower_case_table_names=0).
        ((), ("SHOP",), None),
        (("SHOP",), (), "binlog_do_db"),
    ],
)
def test_binlog_filters(do: tuple[str, ...], ignore: tuple[str, ...], expected: str | None) -> None:
    assert binlog_excludes("shop", do, ignore) == expected


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("shop.%", "shop.outbox", True),
        ("shop.%", "shopx.outbox", False),
        ("sh_p.outbox", "shop.outbox", True),
        ("sh_p.outbox", "shoop.outbox", False),
        ("%.outbox", "billing.outbox", True),
        ("%.out%", "billing.outbox_v2", True),
        ("shop.out\\_box", "shop.out_box", True),
        ("shop.out\\_box", "shop.outxbox", False),
        ("SHOP.%", "shop.outbox", True),  # the server compares these case-insensitively
        ("shop.o.tbox", "shop.outbox", False),  # "." is literal, not a regex
    ],
)
def test_wild_patterns(pattern: str, text: str, expected: bool) -> None:
    assert wild_match(pattern, text) is expected


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (ReplicationFilters(), None),
        (ReplicationFilters(do_db=("shop",)), None),
        (ReplicationFilters(do_db=("billing",)), "replicate_do_db"),
        (ReplicationFilters(ignore_db=("shop",)), "replicate_ignore_db"),
        (ReplicationFilters(do_db=("shop",), ignore_db=("shop",)), None),
        (ReplicationFilters(ignore_db=("billing",)), None),
        (ReplicationFilters(do_table=("shop.outbox",)), None),
        (ReplicationFilters(do_table=("shop.orders",)), "replicate_do_table"),
        (ReplicationFilters(ignore_table=("shop.outbox",)), "replicate_ignore_table"),
        (ReplicationFilters(ignore_table=("shop.orders",)), None),
        # A do-table match wins over an ignore rule for the same table.
        (
            ReplicationFilters(do_table=("shop.outbox",), ignore_table=("shop.outbox",)),
            None,
        ),
        (ReplicationFilters(wild_do_table=("shop.%",)), None),
        (ReplicationFilters(wild_do_table=("billing.%",)), "replicate_wild_do_table"),
        (ReplicationFilters(wild_ignore_table=("shop.out%",)), "replicate_wild_ignore_table"),
        (ReplicationFilters(wild_ignore_table=("%.orders",)), None),
        # Ignore rules are checked before wild-do: an ignored table stays ignored.
        (
            ReplicationFilters(wild_do_table=("%.%",), ignore_table=("shop.outbox",)),
            "replicate_ignore_table",
        ),
        # Wild-do admits before wild-ignore drops.
        (ReplicationFilters(wild_do_table=("shop.%",), wild_ignore_table=("%.%",)), None),
        # The database rules come first: a do-table cannot bring an ignored schema back.
        (
            ReplicationFilters(ignore_db=("shop",), do_table=("shop.outbox",)),
            "replicate_ignore_db",
        ),
        # Other tables' do-rules drop every table not named.
        (
            ReplicationFilters(do_table=("shop.orders",), wild_ignore_table=("x.%",)),
            "replicate_do_table",
        ),
    ],
)
def test_replication_filters(filters: ReplicationFilters, expected: str | None) -> None:
    assert replication_excludes("shop", "outbox", filters) == expected


def test_filters_from_a_status_row() -> None:
    row = {
        "Connection_name": "",
        "Master_Host": "10.0.0.1",
        "Master_Port": 3306,
        "Replicate_Do_DB": "",
        "Replicate_Ignore_DB": "shop,billing",
        "Replicate_Do_Table": None,
        "Replicate_Ignore_Table": "",
        "Replicate_Wild_Do_Table": "",
        "Replicate_Wild_Ignore_Table": "a.%, b.%",
    }
    f = ReplicationFilters.from_status(row)
    assert f.ignore_db == ("shop", "billing")
    assert f.wild_ignore_table == ("a.%", "b.%")
    assert f.do_db == () and f.do_table == ()
    assert f.source == "10.0.0.1:3306"
    assert replication_excludes("billing", "outbox", f) == "replicate_ignore_db"
