"""Example API server: orders, each change written with its event in one transaction.

    uvicorn app:app --app-dir examples/api-server --port 8000

Settings (environment):
  ORDERS_DATABASE_URL  the orders database, MySQL/MariaDB or PostgreSQL; the URL's driver
                       is replaced by asyncmy (MySQL) or psycopg (PostgreSQL) (default:
                       the local stack's MariaDB ``outbox`` database)
  ORDERS_OUTBOX_MODE   table (default: an outbox row, inserted and deleted) or message
                       (PostgreSQL 14+ only: a logical decoding message, no table)

Endpoints (try http://127.0.0.1:8000/docs):
  POST /orders                 {"customer_id": "alice", "amount": "42.50"}  -> 201, OrderPlaced
  POST /orders/{id}/status     {"status": "paid"}                           -> OrderStatusChanged
  POST /orders/{id}/cancel                                                  -> OrderCancelled
  GET  /orders/{id}
  GET  /healthz

Every state change runs in one transaction: the ``orders`` row and its outbox event
commit together or not at all. The relay publishes the event to
``outbox.event.order`` (aggregate type ``order``) with the order id as Kafka key, so
the events of one order stay in order.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from transactional_outbox import AsyncOutboxSession

DEFAULT_URL = "mysql+asyncmy://outbox:outbox@127.0.0.1:13306/outbox"
AGGREGATE = "order"

# Status machine. Cancelling has its own endpoint (and event); "cancelled" and
# "delivered" are final.
ALLOWED: dict[str, tuple[str, ...]] = {
    "placed": ("paid", "cancelled"),
    "paid": ("shipped", "cancelled"),
    "shipped": ("delivered",),
    "delivered": (),
    "cancelled": (),
}


# Microseconds on MySQL/MariaDB (DATETIME alone keeps seconds); PostgreSQL's
# TIMESTAMP keeps them already.
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
ASYNC_DRIVERS = {
    "mysql": "mysql+asyncmy",
    "mariadb": "mysql+asyncmy",
    "postgresql": "postgresql+psycopg",
}


class Base(DeclarativeBase):
    pass


class Order(Base):
    """The ``orders`` table (created by this example's alembic revision orders_0001)."""

    __tablename__ = "orders"

    # SQLite (test_app.py) autoincrements only an INTEGER primary key.
    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    customer_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    status: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP)  # UTC
    updated_at: Mapped[datetime] = mapped_column(TIMESTAMP)


# -- request / response bodies (pydantic validates; a bad body is a 422) ---------


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\w.@-]+$")]
    amount: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]


class ChangeStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "cancelled" is not accepted here: use POST /orders/{id}/cancel.
    status: Literal["paid", "shipped", "delivered"]


class OrderOut(BaseModel):
    id: int
    customer_id: str
    amount: Decimal
    status: str
    created_at: datetime
    updated_at: datetime


def _out(order: Order) -> OrderOut:
    return OrderOut(
        id=order.id,
        customer_id=order.customer_id,
        amount=order.amount,
        status=order.status,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # DATETIME holds no zone: UTC


def database_url() -> str:
    url = make_url(os.environ.get("ORDERS_DATABASE_URL", DEFAULT_URL))
    driver = ASYNC_DRIVERS.get(url.get_backend_name(), url.drivername)
    return url.set(drivername=driver).render_as_string(hide_password=False)


engine = create_async_engine(database_url(), pool_pre_ping=True)
# AsyncOutboxSession adds session.add_event(...); events are written at flush/commit,
# in the same transaction as the ORM changes.
Session = async_sessionmaker(
    engine,
    class_=AsyncOutboxSession,
    expire_on_commit=False,
    outbox_mode=os.environ.get("ORDERS_OUTBOX_MODE", "table"),
)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await engine.dispose()


app = FastAPI(title="orders (transactional-outbox example)", lifespan=lifespan)


async def _locked(session: AsyncOutboxSession, order_id: int) -> Order:
    # FOR UPDATE: two concurrent changes of one order run one after the other, so
    # the transition check and the event see the status the other one committed.
    order = await session.get(Order, order_id, with_for_update=True)
    if order is None:
        raise HTTPException(404, f"order {order_id} not found")
    return order


def _transition(order: Order, new: str) -> None:
    if new not in ALLOWED[order.status]:
        allowed = ", ".join(ALLOWED[order.status]) or "none, it is final"
        raise HTTPException(
            409,
            f"order {order.id} is {order.status!r}: cannot change it to {new!r}"
            f" (allowed: {allowed})",
        )


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    async with Session() as session:
        await session.execute(sa.text("SELECT 1"))
    return {"status": "ok"}


@app.post("/orders", status_code=201)
async def place_order(body: PlaceOrder) -> OrderOut:
    async with Session.begin() as session:  # commits at the end, rolls back on error
        now = _now()
        order = Order(
            customer_id=body.customer_id,
            amount=body.amount,
            status="placed",
            created_at=now,
            updated_at=now,
        )
        session.add(order)
        await session.flush()  # assigns order.id, needed as the event's aggregate id
        session.add_event(
            aggregate_type=AGGREGATE,
            aggregate_id=order.id,
            event_type="OrderPlaced",
            payload={
                "order_id": order.id,
                "customer_id": order.customer_id,
                "amount": str(order.amount),
                "status": order.status,
            },
        )
    return _out(order)


@app.post("/orders/{order_id}/status")
async def change_status(order_id: int, body: ChangeStatus) -> OrderOut:
    async with Session.begin() as session:
        order = await _locked(session, order_id)
        _transition(order, body.status)  # raises 409: nothing was written
        old, order.status, order.updated_at = order.status, body.status, _now()
        session.add_event(
            aggregate_type=AGGREGATE,
            aggregate_id=order.id,
            event_type="OrderStatusChanged",
            payload={
                "order_id": order.id,
                "customer_id": order.customer_id,
                "from": old,
                "to": order.status,
            },
        )
    return _out(order)


@app.post("/orders/{order_id}/cancel")
async def cancel_order(order_id: int) -> OrderOut:
    async with Session.begin() as session:
        order = await _locked(session, order_id)
        _transition(order, "cancelled")
        old, order.status, order.updated_at = order.status, "cancelled", _now()
        session.add_event(
            aggregate_type=AGGREGATE,
            aggregate_id=order.id,
            event_type="OrderCancelled",
            payload={
                "order_id": order.id,
                "customer_id": order.customer_id,
                "amount": str(order.amount),
                "previous_status": old,
            },
        )
    return _out(order)


@app.get("/orders/{order_id}")
async def get_order(order_id: int) -> OrderOut:
    async with Session() as session:
        order = await session.get(Order, order_id)
        if order is None:
            raise HTTPException(404, f"order {order_id} not found")
        return _out(order)
