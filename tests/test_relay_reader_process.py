"""The binlog reader in its own process: wire format, lifecycle, and both reader modes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pymysql
import pytest

from transactional_outbox.exceptions import BinlogPurgedError, InvalidEventError, OutboxError
from transactional_outbox.relay.channel import SourceBatch
from transactional_outbox.relay.mysql.reader_process import _portable, decode_message, encode_batch
from transactional_outbox.relay.mysql.rowdecoder import RejectedRow
from transactional_outbox.relay.position import BinlogPosition
from transactional_outbox.relay.routing import KafkaRecord, TopicRouter, build_record

from .conftest import Stack
from .relay_harness import (
    Collector,
    RelayProcess,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)

ROUTER = TopicRouter(template="t.{aggregatetype}")


def records(n: int) -> list[KafkaRecord]:
    return [
        build_record(make_event(aggregate_id=str(i), payload=bytes([i % 256]) * i), ROUTER)
        for i in range(n)
    ]


# -- wire format (no servers) ---------------------------------------------------------


@pytest.mark.parametrize(
    "commit",
    [
        None,
        BinlogPosition(file="mysql-bin.000007", pos=4242),
        BinlogPosition(file="mysql-bin.000007", pos=4242, gtid="0-1-99,1-2-3"),
        # The server a commit's FILE:POS belongs to crosses too (checkpoint v2).
        BinlogPosition(file="mysql-bin.000007", pos=4242, gtid="0-2-5", server="server_id=2"),
    ],
)
def test_a_batch_of_records_crosses_the_pipe_unchanged(commit: BinlogPosition | None) -> None:
    batch = SourceBatch(records(50), commit)
    data = encode_batch(batch)
    assert data[:1] == b"M"  # the fast path
    kind, back = decode_message(data)
    assert kind == "batch"
    assert back == batch
    assert all(type(r) is KafkaRecord for r in back.records)
    assert back.records[3].key == b"3" and back.records[3].headers == batch.records[3].headers


def test_a_batch_with_a_rejected_row_keeps_its_place() -> None:
    good = records(3)
    bad = RejectedRow(reason="invalid type=b'\\xff': is not valid UTF-8", event_id="x", where="w")
    batch = SourceBatch([good[0], bad, good[1], good[2]], BinlogPosition(file="f.1", pos=9))
    data = encode_batch(batch)
    assert data[:1] == b"P"
    assert decode_message(data) == ("batch", batch)


def test_an_empty_batch_carries_its_commit() -> None:
    batch = SourceBatch([], BinlogPosition(file="f.1", pos=9, gtid="0-1-5"))
    assert decode_message(encode_batch(batch)) == ("batch", batch)


def test_errors_cross_with_their_type_or_as_outbox_errors() -> None:
    purged = _portable(BinlogPurgedError("the binlog there was purged"))
    assert isinstance(purged, BinlogPurgedError)
    assert str(purged) == "the binlog there was purged"
    operational = _portable(pymysql.err.OperationalError(1045, "Access denied"))
    assert isinstance(operational, pymysql.err.OperationalError)
    assert operational.args == (1045, "Access denied")
    # Its constructor takes three arguments, which pickling cannot replay.
    invalid = _portable(InvalidEventError("row", 12, "row image is truncated"))
    assert type(invalid) is OutboxError
    assert "InvalidEventError" in str(invalid) and "truncated" in str(invalid)


# -- the relay with a reader process ---------------------------------------------------


def children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("reader", ["process", "thread"])
async def test_both_reader_modes_deliver_in_order(
    conn, settings_kw, topic_prefix, stack: Stack, reader: str
) -> None:
    events = [make_event(aggregate_id=str(i % 3), payload=b"%d" % i) for i in range(300)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(relay_settings(**settings_kw, reader=reader)):
            for k in range(0, len(events), 30):
                write_events(conn, events[k : k + 30])
            await col.wait_for(len(events))
    assert sorted(col.ids()) == sorted(str(e.id) for e in events)
    by_key: dict[bytes, list[str]] = {}
    for r in col.records:
        assert r.key is not None
        by_key.setdefault(r.key, []).append(dict(r.headers)["id"].decode())
    for key in ("0", "1", "2"):
        assert by_key[key.encode()] == [str(e.id) for e in events if e.aggregate_id == key]


async def publishing_relay(
    conn, settings_kw, topic_prefix, stack: Stack, tmp_path: Path, *, own_group: bool = False
) -> tuple[RelayProcess, int]:
    """A relay process that has published one event, and its reader's pid. The caller
    stops it."""
    relay = RelayProcess(relay_settings(**settings_kw), tmp_path / "relay.log")
    relay.start(own_group=own_group)
    assert relay.proc is not None
    try:
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            write_events(conn, [make_event()])
            await col.wait_for(1)
        [reader] = children(relay.proc.pid)
    except BaseException:
        relay.kill(signal.SIGKILL)
        raise
    return relay, reader


async def test_the_reader_process_dies_with_a_killed_relay(
    conn, settings_kw, topic_prefix, stack: Stack, tmp_path: Path
) -> None:
    relay, reader = await publishing_relay(conn, settings_kw, topic_prefix, stack, tmp_path)
    relay.kill(signal.SIGKILL)
    await wait_until(lambda: not alive(reader), within=10, what="the reader process to exit")


async def test_a_dead_reader_process_stops_the_relay_with_an_error(
    conn, settings_kw, topic_prefix, stack: Stack, tmp_path: Path
) -> None:
    relay, reader = await publishing_relay(conn, settings_kw, topic_prefix, stack, tmp_path)
    assert relay.proc is not None
    try:
        os.kill(reader, signal.SIGKILL)
        await wait_until(lambda: relay.proc.poll() is not None, within=30, what="relay exit")
    finally:
        if relay.proc.poll() is None:
            relay.kill(signal.SIGKILL)
    assert relay.proc.returncode == 1
    assert "binlog reader process exited unexpectedly" in relay.log()


async def test_sigterm_to_the_whole_process_group_stops_cleanly(
    conn, settings_kw, topic_prefix, stack: Stack, tmp_path: Path
) -> None:
    # What systemd and a terminal's Ctrl-C do: signal every process of the group.
    relay, reader = await publishing_relay(
        conn, settings_kw, topic_prefix, stack, tmp_path, own_group=True
    )
    assert relay.proc is not None
    os.killpg(relay.proc.pid, signal.SIGTERM)
    assert relay.proc.wait(30) == 0, relay.log()
    assert "stopped cleanly" in relay.log()
    await wait_until(lambda: not alive(reader), within=10, what="the reader process to exit")
