"""Tests of the API server's events, with no MySQL, relay or Kafka: SQLite and the outbox
test helpers. Run: ``pytest examples/api-server``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import app
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from transactional_outbox import AsyncOutboxSession, outbox_table
from transactional_outbox.testing import CapturedEvents

# In your project, put this line in the top-level conftest.py.
pytest_plugins = ["transactional_outbox.testing.pytest_plugin"]

OUTBOX = outbox_table(sa.MetaData())


@pytest.fixture
async def client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a fresh SQLite database, called in-process."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(app.Base.metadata.create_all)
        await conn.run_sync(OUTBOX.create)  # the app's sessions write it
    sessions = async_sessionmaker(engine, class_=AsyncOutboxSession, expire_on_commit=False)
    monkeypatch.setattr(app, "Session", sessions)
    transport = httpx.ASGITransport(app=app.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
    await engine.dispose()


async def test_placing_an_order_emits_order_placed(
    client: httpx.AsyncClient, outbox_events: CapturedEvents
) -> None:
    resp = await client.post("/orders", json={"customer_id": "alice", "amount": "42.50"})
    assert resp.status_code == 201
    order_id = resp.json()["id"]
    outbox_events.one(
        "OrderPlaced",
        aggregate_type="order",
        aggregate_id=order_id,
        payload={
            "order_id": order_id,
            "customer_id": "alice",
            "amount": "42.50",
            "status": "placed",
        },
    )


async def test_an_order_lifecycle_emits_its_events_in_order(
    client: httpx.AsyncClient, outbox_events: CapturedEvents
) -> None:
    order_id = (await client.post("/orders", json={"customer_id": "bob", "amount": "10"})).json()[
        "id"
    ]
    await client.post(f"/orders/{order_id}/status", json={"status": "paid"})
    await client.post(f"/orders/{order_id}/cancel")
    events = outbox_events.for_aggregate("order", order_id)
    assert events.types() == ["OrderPlaced", "OrderStatusChanged", "OrderCancelled"]
    assert events.payloads()[1] == {
        "order_id": order_id,
        "customer_id": "bob",
        "from": "placed",
        "to": "paid",
    }
    # The Kafka key is the order id: all of one order's events land on one partition.
    assert {r.key for r in events.records()} == {str(order_id).encode()}


async def test_a_refused_change_emits_nothing(
    client: httpx.AsyncClient, outbox_events: CapturedEvents
) -> None:
    order_id = (await client.post("/orders", json={"customer_id": "carol", "amount": "5"})).json()[
        "id"
    ]
    await client.post(f"/orders/{order_id}/cancel")
    outbox_events.clear()  # only what follows matters
    resp = await client.post(f"/orders/{order_id}/status", json={"status": "shipped"})
    assert resp.status_code == 409
    assert resp.json()["detail"].startswith(f"order {order_id} is 'cancelled'")
    assert len(outbox_events) == 0
