"""The relay against real MariaDB, Redis and the broker."""

from __future__ import annotations

import json
import uuid

from aiokafka.partitioner import DefaultPartitioner

from transactional_outbox.event import format_timestamp

from .relay_harness import (
    OUTBOX_DDL,
    Collector,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)


async def test_record_shape_matches_the_contract(conn, settings_kw, topic_prefix) -> None:
    event = make_event(
        "order",
        "o-42",
        "OrderPlaced",
        b"\x00\xff not utf-8 \x80",
        headers={"traceparent": "00-abc-def-01", "content-type": "application/json"},
    )
    write_events(conn, [event])
    async with Collector(settings_kw["kafka_bootstrap"]) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(relay_settings(**settings_kw)):
            await col.wait_for(1)
    [rec] = col.records
    assert rec.topic == topic_prefix + "order"
    assert rec.key == b"o-42"
    assert rec.value == b"\x00\xff not utf-8 \x80"
    assert list(rec.headers) == [
        ("id", str(event.id).encode()),
        ("type", b"OrderPlaced"),
        ("aggregatetype", b"order"),
        ("aggregateid", b"o-42"),
        ("timestamp", format_timestamp(event.timestamp).encode()),
        ("traceparent", b"00-abc-def-01"),
        ("content-type", b"application/json"),
    ]
    assert rec.timestamp == int(event.timestamp.timestamp() * 1000)


async def test_ids_round_trip_byte_exact_including_trailing_zero_bytes(
    conn, settings_kw, topic_prefix
) -> None:
    ids = [
        uuid.UUID(bytes=b"\x00" * 16),
        uuid.UUID(bytes=b"\xff" * 15 + b"\x00"),
        uuid.UUID(bytes=b"\x01" + b"\x00" * 15),
        uuid.UUID(bytes=b"\x80" * 8 + b"\x00" * 8),
        uuid.UUID(bytes=bytes(range(16))),
        *[uuid.UUID(bytes=uuid.uuid4().bytes[:k] + b"\x00" * (16 - k)) for k in range(1, 16)],
        *[uuid.uuid4() for _ in range(50)],
    ]
    write_events(conn, [make_event(id=i, aggregate_id=str(n)) for n, i in enumerate(ids)])
    async with Collector(settings_kw["kafka_bootstrap"]) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(relay_settings(**settings_kw)):
            await col.wait_for(len(ids))
    assert sorted(col.ids()) == sorted(str(i) for i in ids)


async def test_rolled_back_and_other_tables_never_published(
    conn, settings_kw, topic_prefix
) -> None:
    with conn.cursor() as cur:
        cur.execute(OUTBOX_DDL.format(table="not_outbox"))
    kept = make_event(aggregate_id="kept")
    write_events(conn, [make_event(aggregate_id="rolled-back")], rollback=True)
    write_events(conn, [make_event(aggregate_id="other-table")], table="not_outbox")
    write_events(conn, [kept])
    async with Collector(settings_kw["kafka_bootstrap"]) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(relay_settings(**settings_kw)) as relay:
            await col.wait_for(1)
            # A later marker proves the relay read past everything above.
            marker = make_event(aggregate_id="marker")
            write_events(conn, [marker])
            await col.wait_for(2)
            await wait_until(lambda: relay.stats.published == 2, what="2 published")
    assert col.ids() == [str(kept.id), str(marker.id)]


async def test_order_per_aggregate_with_interleaved_transactions(
    conn, settings_kw, topic_prefix
) -> None:
    aggregates = [f"agg-{i}" for i in range(120)]
    expected: dict[str, list[str]] = {a: [] for a in aggregates}
    for round_ in range(10):
        batch = []
        for j, agg in enumerate(aggregates[round_ % 3 :: 2]):
            e = make_event(aggregate_id=agg, payload=json.dumps([round_, j]).encode())
            batch.append(e)
            expected[agg].append(str(e.id))
        # Several transactions per round, each touching many aggregates.
        for k in range(0, len(batch), 17):
            write_events(conn, batch[k : k + 17])
    total = sum(len(v) for v in expected.values())
    async with Collector(settings_kw["kafka_bootstrap"]) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(relay_settings(**settings_kw)):
            await col.wait_for(total)
    got: dict[str, list[str]] = {a: [] for a in aggregates}
    for rec in col.records:
        got[rec.key.decode()].append(dict(rec.headers)["id"].decode())
    assert got == expected
    # Keys land on the partition the Java client (and aiokafka's send()) would pick.
    partitioner = DefaultPartitioner()
    parts = sorted({rec.partition for rec in col.records})
    assert len(parts) == 4
    assert all(rec.partition == partitioner(rec.key, parts, parts) for rec in col.records)


async def test_table_with_extra_columns_of_other_types_is_decoded_by_the_library(
    conn, settings_kw, topic_prefix
) -> None:
    # An INT column has no fast-decoder plan: the relay falls back, same records.
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE outbox ADD COLUMN seq INT NULL, ADD COLUMN note JSON NULL")
    events = [make_event(aggregate_id=str(i), payload=b"\x00\x01") for i in range(5)]
    write_events(conn, events)
    async with Collector(settings_kw["kafka_bootstrap"]) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(relay_settings(**settings_kw)):
            await col.wait_for(5)
    assert sorted(col.ids()) == sorted(str(e.id) for e in events)
    assert {r.value for r in col.records} == {b"\x00\x01"}
