"""Checkpoint v2 (server identity) and where a checkpoint resumes after a failover (no servers)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest

from transactional_outbox.exceptions import (
    BinlogPurgedError,
    CheckpointError,
    ConfigurationError,
)
from transactional_outbox.relay.mysql.checks import ServerInfo
from transactional_outbox.relay.mysql.resume import (
    missing_gtids,
    resume_checkpoint,
    same_place,
    shared_state,
    uses_gtid,
)
from transactional_outbox.relay.position import (
    BinlogPosition,
    decode_checkpoint,
    encode_checkpoint,
    server_identity,
)

OLD = "server_id=1"  # the old primary
NEW = "server_id=2"  # the promoted replica
UUID_A = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
UUID_B = "896e7882-18fe-11ef-ab88-22222d34d411"


# -- the stored form ---------------------------------------------------------------------


def test_checkpoint_v2_records_the_server_and_round_trips() -> None:
    p = BinlogPosition(file="mysql-bin.000001", pos=1234, gtid="0-1-924", server=OLD)
    raw = encode_checkpoint(p)
    data = json.loads(raw)
    assert (data["v"], data["server"], data["gtid"]) == (2, OLD, "0-1-924")
    assert decode_checkpoint(raw) == p


def test_checkpoint_v1_is_still_read_without_a_server() -> None:
    raw = json.dumps(
        {"v": 1, "file": "mysql-bin.000003", "pos": 77, "gtid": "0-1-5", "saved_at": "x"}
    )
    assert decode_checkpoint(raw) == BinlogPosition(
        file="mysql-bin.000003", pos=77, gtid="0-1-5", server=None
    )


@pytest.mark.parametrize("server", [3, "", ["server_id=1"]])
def test_checkpoint_v2_refuses_an_invalid_server(server: object) -> None:
    raw = json.dumps({"v": 2, "file": "f.1", "pos": 4, "gtid": None, "server": server})
    with pytest.raises(CheckpointError, match="invalid server"):
        decode_checkpoint(raw)


def test_server_identity_is_server_id_on_mariadb_and_the_uuid_on_mysql() -> None:
    assert server_identity(is_mariadb=True, server_id=7, server_uuid=None) == "server_id=7"
    assert (
        server_identity(is_mariadb=False, server_id=7, server_uuid=UUID_A.upper())
        == f"server_uuid={UUID_A}"
    )


# -- GTID arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "server", "missing"),
    [
        ("0-1-924", "0-1-930", []),  # the server went on
        ("0-1-924", "0-1-924,0-2-960", []),  # promoted with everything
        ("0-1-924", "0-1-920", ["0-1-924"]),  # promoted while behind
        ("0-1-924", "0-1-920,0-2-935", ["0-1-924"]),  # behind, then written to
        ("0-1-924", "0-2-3", ["0-1-924"]),  # never had server 1's GTIDs in domain 0
        ("0-1-924,1-1-5", "0-1-930", []),  # domain 1 unknown here: nothing of it to skip
        ("0-1-924,1-1-5", "0-1-930,1-1-4", ["1-1-5"]),
    ],
)
def test_missing_gtids_mariadb(checkpoint: str, server: str, missing: list[str]) -> None:
    assert missing_gtids(checkpoint, server, is_mariadb=True) == missing


def test_missing_gtids_mysql() -> None:
    executed = f"{UUID_A}:1-100,{UUID_B}:1-5"
    assert missing_gtids(f"{UUID_A}:1-90", executed, is_mariadb=False) == []
    assert missing_gtids(f"{UUID_A}:1-101", executed, is_mariadb=False) == [f"{UUID_A}:101"]
    assert missing_gtids(f"{UUID_B}:1-3,{UUID_A}:1-2", f"{UUID_A}:1-3", is_mariadb=False) == [
        f"{UUID_B}:1"
    ]


@pytest.mark.parametrize(
    ("checkpoint", "server", "shared"),
    [
        ("0-1-924", "0-1-920,0-2-935", "0-1-920"),
        ("0-1-924", "0-1-930", "0-1-924"),
        ("0-1-924,1-1-5", "0-1-920", "0-1-920,1-1-5"),
        ("0-1-924", "0-2-3", None),  # domain 0 here has no GTID of server 1: cannot tell
    ],
)
def test_shared_state_is_the_newest_state_both_passed(
    checkpoint: str, server: str, shared: str | None
) -> None:
    assert shared_state(checkpoint, server) == shared


def test_same_place_ignores_domain_order() -> None:
    assert same_place("1-1-5,0-1-9", "0-1-9,1-1-5")
    assert not same_place("0-1-9", "0-2-9")
    assert not same_place(None, "0-1-9")


def test_uses_gtid() -> None:
    assert uses_gtid("auto", gtid_enabled=True)
    assert not uses_gtid("auto", gtid_enabled=False)
    assert uses_gtid("on", gtid_enabled=False)  # and resume_checkpoint refuses it: exit 2
    assert not uses_gtid("off", gtid_enabled=True)


# -- the decision table ------------------------------------------------------------------


def mariadb(
    server_id: int = 2, *, state: str = "0-1-930", binlogs: tuple[str, ...] = ()
) -> ServerInfo:
    return ServerInfo(
        version="10.11.6-MariaDB",
        is_mariadb=True,
        gtid_enabled=True,
        current=BinlogPosition(file="mysql-bin.000001", pos=9999),
        binlogs=binlogs or ("mysql-bin.000001",),
        server_id=server_id,
        gtid_state=state,
    )


def mysql(uuid: str = UUID_B, *, gtids: bool) -> ServerInfo:
    return ServerInfo(
        version="8.0.36",
        is_mariadb=False,
        gtid_enabled=gtids,
        current=BinlogPosition(file="binlog.000001", pos=9999),
        binlogs=("binlog.000001",),
        server_id=1,
        server_uuid=uuid,
        gtid_state=f"{UUID_A}:1-100" if gtids else None,
        gtid_purged="" if gtids else None,
    )


def at(table: dict[tuple[str, int], str]) -> Callable[[str, int], str | None]:
    """A BINLOG_GTID_POS answering from ``table`` (None elsewhere)."""
    return lambda file, pos: table.get((file, pos))


CKPT = BinlogPosition(file="mysql-bin.000001", pos=5000, gtid="0-1-924", server=OLD)


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_gtid_server_resumes_by_gtid_on_any_server_that_has_the_gtid(mode: str) -> None:
    for info in (mariadb(1, state="0-1-930"), mariadb(2, state="0-1-924,0-2-940")):
        position, why = resume_checkpoint(CKPT, info, mode=mode, gtid_at=at({}))
        assert position == CKPT  # streamed by its GTID state; FILE:POS never used
        assert why == "checkpoint, by GTID 0-1-924"


def test_gtid_server_without_the_gtid_says_so_with_advice_that_names_a_shared_state() -> None:
    with pytest.raises(CheckpointError) as info:
        resume_checkpoint(CKPT, mariadb(2, state="0-1-920,0-2-935"), mode="auto", gtid_at=at({}))
    text = str(info.value)
    assert not isinstance(info.value, BinlogPurgedError)
    assert "the server does not have GTID 0-1-924" in text
    assert "promoted while behind the old primary, or diverged" in text
    assert "--start-position gtid:0-1-920" in text
    assert "purged" not in text


def test_gtid_server_without_a_shared_state_advises_earliest() -> None:
    with pytest.raises(CheckpointError, match="--ignore-checkpoint --start-position earliest"):
        resume_checkpoint(CKPT, mariadb(2, state="0-2-3"), mode="auto", gtid_at=at({}))


def test_gtid_resume_past_the_oldest_binlog_is_purged() -> None:
    info = mariadb(1, state="0-1-990", binlogs=("mysql-bin.000007", "mysql-bin.000008"))
    gtid_at = at({("mysql-bin.000007", 4): "0-1-950"})  # the oldest file starts after 924
    with pytest.raises(BinlogPurgedError, match="purged binlogs"):
        resume_checkpoint(CKPT, info, mode="auto", gtid_at=gtid_at)


def test_off_same_server_resumes_by_file_pos_where_the_gtid_says() -> None:
    gtid_at = at({("mysql-bin.000001", 5000): "0-1-924"})
    assert resume_checkpoint(CKPT, mariadb(1), mode="off", gtid_at=gtid_at) == (
        CKPT,
        "checkpoint",
    )


def test_off_other_server_is_refused_not_read_at_the_old_offset() -> None:
    # Both servers have mysql-bin.000001; the old offset would be read on the new one.
    with pytest.raises(CheckpointError, match="the server changed") as info:
        resume_checkpoint(CKPT, mariadb(2), mode="off", gtid_at=at({}))
    assert "set resume_by_gtid=auto" in str(info.value)


def test_off_v1_checkpoint_at_another_servers_boundary_is_refused() -> None:
    # No server recorded (v1): the offset is a transaction boundary here, but the
    # GTID state there is not the checkpoint's (the 50 silently skipped events).
    v1 = BinlogPosition(file="mysql-bin.000001", pos=5000, gtid="0-1-924")
    gtid_at = at({("mysql-bin.000001", 5000): "0-2-935"})
    with pytest.raises(CheckpointError, match="not a place in this server's binlog"):
        resume_checkpoint(v1, mariadb(2), mode="off", gtid_at=gtid_at)


def test_off_same_server_purged_file_is_purged() -> None:
    info = mariadb(1, binlogs=("mysql-bin.000002",))
    with pytest.raises(BinlogPurgedError, match="no longer has"):
        resume_checkpoint(CKPT, info, mode="off", gtid_at=at({}))


def test_no_gtids_same_server_resumes_by_file_pos() -> None:
    ckpt = BinlogPosition(file="binlog.000001", pos=700, server=f"server_uuid={UUID_B}")
    for mode in ("auto", "off"):
        assert resume_checkpoint(ckpt, mysql(gtids=False), mode=mode, gtid_at=at({}))[0] == ckpt


def test_no_gtids_other_server_exits_3_saying_how_to_choose_a_position() -> None:
    ckpt = BinlogPosition(file="binlog.000001", pos=700, server=f"server_uuid={UUID_A}")
    with pytest.raises(CheckpointError, match="the server changed") as info:
        resume_checkpoint(ckpt, mysql(UUID_B, gtids=False), mode="auto", gtid_at=at({}))
    assert "--start-position FILE:POS" in str(info.value)


def test_no_gtids_and_resume_by_gtid_on_is_a_configuration_error() -> None:
    ckpt = BinlogPosition(file="binlog.000001", pos=700)
    with pytest.raises(ConfigurationError, match="resume_by_gtid: is on, but the server has no"):
        resume_checkpoint(ckpt, mysql(gtids=False), mode="on", gtid_at=at({}))


def test_mysql_with_gtids_resumes_by_gtid_on_another_server() -> None:
    ckpt = BinlogPosition(
        file="binlog.000001", pos=700, gtid=f"{UUID_A}:1-90", server=f"server_uuid={UUID_A}"
    )
    assert (
        resume_checkpoint(ckpt, mysql(UUID_B, gtids=True), mode="auto", gtid_at=at({}))[0] == ckpt
    )


def test_mysql_with_gtids_purged_past_the_checkpoint_is_purged() -> None:
    ckpt = BinlogPosition(file="binlog.000001", pos=700, gtid=f"{UUID_A}:1-90")
    info = dataclasses.replace(mysql(gtids=True), gtid_purged=f"{UUID_A}:1-95")
    with pytest.raises(BinlogPurgedError):
        resume_checkpoint(ckpt, info, mode="auto", gtid_at=at({}))
