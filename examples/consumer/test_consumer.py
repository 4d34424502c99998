"""Tests of the consumer's handler, with no Kafka, relay or MySQL: SQLite and the outbox
test helpers. Run: ``pytest examples/consumer``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import consumer
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from transactional_outbox import OutboxEvent
from transactional_outbox.consumer import ReceivedEvent, inbox_table
from transactional_outbox.testing import to_received


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The read model and the inbox table on a fresh SQLite database."""
    eng = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'stats.db'}")
    async with eng.begin() as conn:
        await conn.run_sync(consumer.metadata.create_all)
        await conn.run_sync(inbox_table(sa.MetaData()).create)
    yield eng
    await eng.dispose()


def order_event(event_type: str, order_id: int, **payload: Any) -> ReceivedEvent:
    """What the consumer receives for an event the API server writes (see its test_app.py)."""
    event = OutboxEvent.create(
        aggregate_type="order",
        aggregate_id=order_id,
        event_type=event_type,
        payload={"order_id": order_id, **payload},
    )
    return to_received(event)  # through the relay's record and ReceivedEvent.from_record


async def stats(engine: AsyncEngine) -> dict[str, tuple[int, Decimal, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(consumer.customer_stats))
        return {r.customer_id: (r.orders, r.total_amount, r.cancelled) for r in rows}


async def test_placed_and_cancelled_orders_update_the_read_model(engine: AsyncEngine) -> None:
    handle = consumer.make_handler(engine)
    await handle(order_event("OrderPlaced", 1, customer_id="alice", amount="42.50"))
    await handle(order_event("OrderPlaced", 2, customer_id="alice", amount="10.00"))
    await handle(order_event("OrderStatusChanged", 2, customer_id="alice", to="paid"))
    await handle(order_event("OrderCancelled", 2, customer_id="alice", amount="10.00"))
    assert await stats(engine) == {"alice": (2, Decimal("42.50"), 1)}


async def test_a_redelivered_event_is_applied_once(engine: AsyncEngine) -> None:
    handle = consumer.make_handler(engine)
    placed = order_event("OrderPlaced", 1, customer_id="bob", amount="5.00")
    await handle(placed)
    await handle(placed)  # the relay delivers at least once
    assert await stats(engine) == {"bob": (1, Decimal("5.00"), 0)}


async def test_a_handler_that_fails_once_applies_the_event_on_retry(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_bump = consumer._bump
    calls = 0

    async def flaky_bump(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        await real_bump(*args, **kwargs)  # written, then rolled back with the inbox row
        if calls == 1:
            raise ConnectionError("database went away")

    monkeypatch.setattr(consumer, "_bump", flaky_bump)
    handle = consumer.make_handler(engine)
    placed = order_event("OrderPlaced", 1, customer_id="carol", amount="7.00")
    with pytest.raises(ConnectionError):
        await handle(placed)
    assert await stats(engine) == {}  # nothing applied, the event is not marked done
    await handle(placed)  # the runner's retry
    await handle(placed)  # and a duplicate after it
    assert await stats(engine) == {"carol": (1, Decimal("7.00"), 0)}
