"""Binlog positions, GTID state, the checkpoint's stored form, start policies (no servers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from transactional_outbox.exceptions import CheckpointError, ConfigurationError
from transactional_outbox.relay.position import (
    BinlogPosition,
    MariaDBGtidState,
    MySQLGtidSet,
    StartPolicy,
    decode_checkpoint,
    encode_checkpoint,
)

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "896e7882-18fe-11ef-ab88-22222d34d411"

# -- BinlogPosition -------------------------------------------------------------


def test_binlog_position_str_and_equality() -> None:
    p = BinlogPosition(file="mysql-bin.000003", pos=1234)
    assert str(p) == "mysql-bin.000003:1234"
    g = BinlogPosition(file="mysql-bin.000003", pos=1234, gtid="0-1-42")
    assert str(g) == "mysql-bin.000003:1234 (gtid 0-1-42)"
    assert p != g
    assert p == BinlogPosition(file="mysql-bin.000003", pos=1234)
    with pytest.raises(TypeError):
        BinlogPosition("mysql-bin.000003", 1234)  # type: ignore[call-arg]


# -- MariaDB GTID state -----------------------------------------------------------


def test_mariadb_parse_and_str() -> None:
    state = MariaDBGtidState.parse("1-2-7, 0-1-42")
    assert state.domains == {0: "0-1-42", 1: "1-2-7"}
    assert str(state) == "0-1-42,1-2-7"  # sorted by domain


@pytest.mark.parametrize("text", [None, "", " , "])
def test_mariadb_parse_empty(text: str | None) -> None:
    state = MariaDBGtidState.parse(text)
    assert state.domains == {}
    assert str(state) == ""


@pytest.mark.parametrize("text", ["0-1", "a-b-c", "0-1-42,junk", f"{U1}:1-5"])
def test_mariadb_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a MariaDB GTID"):
        MariaDBGtidState.parse(text)


def test_mariadb_update_replaces_the_domain_and_adds_new_ones() -> None:
    state = MariaDBGtidState.parse("0-1-42,1-2-7")
    state.update("0-1-43")
    assert str(state) == "0-1-43,1-2-7"
    state.update("0-3-44")  # another server in the same domain
    state.update("5-1-1")
    assert str(state) == "0-3-44,1-2-7,5-1-1"
    assert str(MariaDBGtidState.parse(str(state))) == str(state)


# -- MySQL GTID set ---------------------------------------------------------------


def test_mysql_parse_single_and_multi_interval() -> None:
    s = MySQLGtidSet.parse(f"{U1.upper()}:1-5:7:9-11,\n{U2}:3")
    assert s.intervals == {U1: [(1, 5), (7, 7), (9, 11)], U2: [(3, 3)]}
    assert str(s) == f"{U1}:1-5:7:9-11,{U2}:3"


@pytest.mark.parametrize("text", [None, ""])
def test_mysql_parse_empty(text: str | None) -> None:
    s = MySQLGtidSet.parse(text)
    assert s.intervals == {}
    assert str(s) == ""


def test_mysql_parse_merges_overlapping_and_adjacent_intervals() -> None:
    s = MySQLGtidSet.parse(f"{U1}:4-6:1-3:5-9:11")
    assert s.intervals == {U1: [(1, 9), (11, 11)]}


def test_mysql_update_merges_adjacent_intervals() -> None:
    s = MySQLGtidSet.parse(f"{U1}:1-5:7")
    s.update(f"{U1}:6")  # fills the gap: one interval
    assert str(s) == f"{U1}:1-7"
    s.update(f"{U1}:8")
    s.update(f"{U1}:10")
    assert str(s) == f"{U1}:1-8:10"
    s.update(f"{U1}:3")  # already in: nothing changes
    assert str(s) == f"{U1}:1-8:10"
    s.update(f"{U2.upper()}:1")
    assert str(s) == f"{U1}:1-8:10,{U2}:1"


def test_mysql_tagged_gtids_are_their_own_source() -> None:
    s = MySQLGtidSet.parse(f"{U1}:1-3,{U1}:dba:1-2")
    assert s.intervals == {U1: [(1, 3)], f"{U1}:dba": [(1, 2)]}
    s.update(f"{U1}:dba:3")
    s.update(f"{U1}:4")
    assert s.intervals == {U1: [(1, 4)], f"{U1}:dba": [(1, 3)]}
    assert str(s) == f"{U1}:1-4,{U1}:dba:1-3"
    assert MySQLGtidSet.parse(str(s)) == s


def test_mysql_parses_several_tags_of_one_uuid_as_the_server_prints_them() -> None:
    # MySQL 8.3+ prints tags after the untagged intervals of the same uuid.
    s = MySQLGtidSet.parse(f"{U1}:1-4:domain_1:1-3:15-21:domain_2:8-52,{U2}:1-2")
    assert s.intervals == {
        U1: [(1, 4)],
        f"{U1}:domain_1": [(1, 3), (15, 21)],
        f"{U1}:domain_2": [(8, 52)],
        U2: [(1, 2)],
    }
    assert MySQLGtidSet.parse(str(s)) == s


def test_mysql_tags_are_case_insensitive() -> None:
    s = MySQLGtidSet.parse(f"{U1}:Domain_1:1-3")
    s.update(f"{U1}:DOMAIN_1:4")
    assert s.intervals == {f"{U1}:domain_1": [(1, 4)]}


@pytest.mark.parametrize(
    "text",
    [
        f"{U1}:1",
        f"{U1}:1-100",
        f"{U1}:1-5:7:9-11,{U2}:1-3",
        f"{U1}:1-4,{U1}:aaaa:1,{U1}:abc:1-3",
    ],
)
def test_mysql_str_round_trip(text: str) -> None:
    assert str(MySQLGtidSet.parse(text)) == text


# -- checkpoint encoding -------------------------------------------------------------


@pytest.mark.parametrize("gtid", [None, "0-1-42,1-2-7", f"{U1}:1-5,{U2}:3"])
def test_checkpoint_round_trip(gtid: str | None) -> None:
    p = BinlogPosition(file="mysql-bin.000012", pos=98765, gtid=gtid)
    raw = encode_checkpoint(p, saved_at=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC))
    data = json.loads(raw)
    assert data == {
        "v": 2,
        "file": "mysql-bin.000012",
        "pos": 98765,
        "gtid": gtid,
        "server": None,
        "saved_at": "2024-05-01T12:00:00.123+00:00",
    }
    assert decode_checkpoint(raw) == p
    assert decode_checkpoint(raw.encode()) == p


def test_checkpoint_saved_at_defaults_to_now() -> None:
    before = datetime.now(UTC)
    raw = encode_checkpoint(BinlogPosition(file="f.1", pos=4))
    saved = datetime.fromisoformat(json.loads(raw)["saved_at"])
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= saved
    assert saved <= datetime.now(UTC)


def test_checkpoint_empty_gtid_decodes_as_none() -> None:
    raw = json.dumps({"v": 1, "file": "f.1", "pos": 4, "gtid": ""})
    assert decode_checkpoint(raw) == BinlogPosition(file="f.1", pos=4, gtid=None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        ("", "not valid JSON"),
        ("mysql-bin.000003:1234", "not valid JSON"),
        ("[1, 2]", "unknown format"),
        ('"a string"', "unknown format"),
        ('{"file": "f.1", "pos": 4}', "unknown format"),  # no version
        ('{"v": 3, "file": "f.1", "pos": 4}', "unknown format"),
        ('{"v": "1", "file": "f.1", "pos": 4}', "unknown format"),
        ('{"offset": 17, "partition": 0}', "unknown format"),  # somebody else's JSON
        ('{"v": 1, "pos": 4}', "invalid file/pos"),
        ('{"v": 1, "file": "", "pos": 4}', "invalid file/pos"),
        ('{"v": 1, "file": 3, "pos": 4}', "invalid file/pos"),
        ('{"v": 1, "file": "f.1"}', "invalid file/pos"),
        ('{"v": 1, "file": "f.1", "pos": "4"}', "invalid file/pos"),
        ('{"v": 1, "file": "f.1", "pos": 3}', "invalid file/pos"),
        ('{"v": 1, "file": "f.1", "pos": 4.5}', "invalid file/pos"),
        ('{"v": 1, "file": "f.1", "pos": 4, "gtid": 42}', "invalid gtid"),
        ('{"v": 1, "file": "f.1", "pos": 4, "gtid": ["0-1-1"]}', "invalid gtid"),
    ],
)
def test_decode_checkpoint_rejects_foreign_data(raw: str | bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as info:
        decode_checkpoint(raw)
    text = str(info.value)
    assert "stored checkpoint" in text
    if message in ("not valid JSON", "unknown format"):
        assert "delete the key or give an explicit start position" in text


def test_decode_checkpoint_error_shows_at_most_100_characters_of_the_value() -> None:
    raw = "x" * 500
    with pytest.raises(CheckpointError) as info:
        decode_checkpoint(raw)
    assert "x" * 100 in str(info.value)
    assert "x" * 101 not in str(info.value)


# -- start policy -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["latest", "earliest", "  latest  "])
def test_start_policy_keywords(text: str) -> None:
    policy = StartPolicy.parse(text)
    assert policy == StartPolicy(text.strip())
    assert not policy.explicit


def test_start_policy_file_pos() -> None:
    policy = StartPolicy.parse("mysql-bin.000003:1234")
    assert policy == StartPolicy("position", file="mysql-bin.000003", pos=1234)
    assert policy.explicit
    assert StartPolicy.parse("mysql-bin.000003:4").pos == 4


@pytest.mark.parametrize("pos", [0, 1, 3])
def test_start_policy_rejects_offsets_below_4(pos: int) -> None:
    with pytest.raises(ConfigurationError, match=r"binlog offset must be >= 4") as info:
        StartPolicy.parse(f"mysql-bin.000003:{pos}")
    assert info.value.setting == "start_position"


@pytest.mark.parametrize(
    "text",
    [
        "0-1-42",
        "0-1-42,1-2-7",
        "0-1-42, 1-2-7",
        f"{U1}:1-5",
        f"{U1}:23",  # one GTID: has the FILE:POS shape but is not a position
        f"{U1.upper()}:1-5:7,{U2}:1-3",
        f"{U1}:dba:1-2",
        f"{U1}:1-4:domain_1:1-3:15-21:domain_2:8-52",
    ],
)
def test_start_policy_gtid_sets(text: str) -> None:
    policy = StartPolicy.parse(text)
    assert policy == StartPolicy("gtid", gtid=text)
    assert policy.explicit


@pytest.mark.parametrize(
    ("text", "gtid"),
    [("gtid:0-1-42,1-2-7", "0-1-42,1-2-7"), (f"gtid:{U1}:1-5", f"{U1}:1-5")],
)
def test_start_policy_gtid_prefix(text: str, gtid: str) -> None:
    assert StartPolicy.parse(text) == StartPolicy("gtid", gtid=gtid)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "newest",
        "LATEST",
        "mysql-bin.000003",
        "mysql-bin.000003:",
        "mysql-bin.000003:abc",
        "mysql-bin.000003:-5",
        "file with space:1234",
        "0-1",
        "0-1-42,garbage",
        f"{U1}",
        f"{U1}:",
        f"{U1}:abc",  # a tag with no interval
        f"{U1}:1-5,0-1-42",  # mixed flavours
        "gtid:",
        "gtid:garbage",
        "gtid:mysql-bin.000003:1234",
    ],
)
def test_start_policy_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        StartPolicy.parse(text)
    assert info.value.setting == "start_position"
    assert str(info.value).startswith("start_position: ")
    assert repr(text) in str(info.value)
