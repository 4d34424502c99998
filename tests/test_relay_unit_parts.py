"""The relay's pure parts: dead-letter records, the leader term's lifecycle, stats as metrics."""

from __future__ import annotations

import asyncio
import json

from transactional_outbox.relay.deadletter import (
    dead_letter_record,
    rejected_event_id,
    rejection_reason,
)
from transactional_outbox.relay.leadership import Lease, LeaseKeys
from transactional_outbox.relay.metrics import RelayMetrics
from transactional_outbox.relay.mysql.rowdecoder import RejectedRow
from transactional_outbox.relay.position import BinlogPosition
from transactional_outbox.relay.routing import TopicRouter, build_record
from transactional_outbox.relay.stats import RelayStats
from transactional_outbox.relay.term import LeaderTerm

from .test_relay_unit_routing import event


def test_dead_letter_of_a_refused_event_keeps_key_headers_and_names_the_event() -> None:
    e = event(headers={"trace": "t1"})
    record = build_record(e, TopicRouter())
    dl = dead_letter_record(record, "too large", topic="dlq", now_ms=123)
    assert (dl.topic, dl.key, dl.timestamp_ms) == ("dlq", record.key, 123)
    assert dl.headers == [*record.headers, ("dlq.reason", b"too large")]
    body = json.loads(dl.value)
    assert body == {
        "id": str(e.id),
        "aggregatetype": e.aggregate_type,
        "aggregateid": e.aggregate_id,
        "type": e.event_type,
        "timestamp": e.timestamp.isoformat(),
        "payload_bytes": len(e.payload),
        "topic": record.topic,
        "reason": "too large",
    }
    assert rejected_event_id(record) == str(e.id)
    assert rejection_reason(record, "too large") == "too large"


def test_dead_letter_of_an_invalid_row_says_where_and_keys_by_aggregate() -> None:
    row = RejectedRow(reason="bad id", event_id=None, aggregate_id="a-1", where="at mysql-bin.1:4")
    reason = rejection_reason(row, row.reason)
    assert reason == "invalid outbox row at mysql-bin.1:4: bad id"
    assert rejected_event_id(row) == "(no valid id)"
    dl = dead_letter_record(row, reason, topic="dlq", now_ms=1)
    assert dl.key == b"a-1" and dl.headers == [("dlq.reason", reason.encode())]
    assert json.loads(dl.value) == {"id": None, "aggregateid": "a-1", "reason": reason}


def test_dead_letter_of_a_row_without_aggregate_is_keyed_by_id_or_empty() -> None:
    assert dead_letter_record(RejectedRow("x", event_id="e"), "x", topic="d", now_ms=1).key == b"e"
    assert dead_letter_record(RejectedRow("x"), "x", topic="d", now_ms=1).key == b""


class _RefusingLease(Lease):
    """A lease that another relay took: renewals are refused (no server needed)."""

    def __init__(self) -> None:
        super().__init__(None, LeaseKeys.for_relay("t", "r"), ttl_ms=1000)  # type: ignore[arg-type]

    async def renew(self) -> bool:
        return False


async def test_a_term_is_lost_once_with_its_first_reason_and_tells_the_owner() -> None:
    calls: list[str] = []
    term = LeaderTerm(
        _RefusingLease(), renew_ms=10_000, stats=RelayStats(), on_lost=lambda: calls.append("x")
    )
    assert not term.lost.is_set() and not term.held()
    term.lose("first")
    term.lose("second")
    assert term.lost.is_set() and term.reason == "first" and calls == ["x"]


async def test_a_refused_renewal_loses_the_term_and_leaving_it_stops_renewing() -> None:
    lost = asyncio.Event()
    term = LeaderTerm(_RefusingLease(), renew_ms=1, stats=RelayStats(), on_lost=lost.set)
    async with term:
        await asyncio.wait_for(term.lost.wait(), 5)
    assert lost.is_set() and term.reason == "another relay holds the lease"


async def test_leaving_a_term_cancels_its_renewal() -> None:
    term = LeaderTerm(_RefusingLease(), renew_ms=60_000, stats=RelayStats())
    async with term:
        pass
    assert not term.lost.is_set()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "outbox-lease"]


def test_metrics_are_read_from_the_stats_at_scrape_time() -> None:
    stats = RelayStats(role="leader", database="ok", kafka="degraded")
    metrics = RelayMetrics(stats)
    sample = metrics.registry.get_sample_value
    assert sample("outbox_relay_events_published_total") == 0
    stats.published, stats.publish_errors, stats.behind_bytes = 7, 2, 512
    stats.checkpoint = BinlogPosition(file="mysql-bin.000042", pos=99)
    assert sample("outbox_relay_events_published_total") == 7
    assert sample("outbox_relay_publish_errors_total") == 2
    assert sample("outbox_relay_binlog_behind_bytes") == 512
    assert sample("outbox_relay_binlog_file_index") == 42
    assert sample("outbox_relay_binlog_position") == 99
    assert sample("outbox_relay_leader") == 1
    assert sample("outbox_relay_server_up", {"server": "mysql"}) == 1
    assert sample("outbox_relay_server_up", {"server": "kafka"}) == 0
    assert sample("outbox_relay_events_outstanding") == 0
    metrics.batch_size.observe(3)
    assert sample("outbox_relay_batch_size_count") == 1
    assert b"outbox_relay_events_published_total 7.0" in metrics.render()
