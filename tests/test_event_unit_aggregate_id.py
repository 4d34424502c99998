"""``aggregate_id=None`` says why it is None (issue 24, row 2): the README's first snippet
read ``order.id`` right after ``session.add(order)``, before the flush that assigns it."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from transactional_outbox import InvalidEventError, OutboxEvent, OutboxSession, outbox_table


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    total = sa.Column(sa.Numeric(10, 2), nullable=False)


def test_none_names_the_flush() -> None:
    with pytest.raises(InvalidEventError) as err:
        OutboxEvent.create(aggregate_type="order", aggregate_id=None, event_type="X", payload={})  # type: ignore[arg-type]
    assert str(err.value).startswith("invalid aggregate_id=None: ")
    assert "session.flush()" in str(err.value)


def test_an_id_read_before_the_flush_is_refused_and_after_it_works() -> None:
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    outbox_table(sa.MetaData()).create(engine)
    Session = sessionmaker(engine, class_=OutboxSession, outbox_keep_rows=True)
    with Session.begin() as session:
        order = Order(total=Decimal("42.50"))
        session.add(order)
        with pytest.raises(InvalidEventError, match=r"session\.flush\(\)"):
            session.add_event(
                aggregate_type="order", aggregate_id=order.id, event_type="X", payload={}
            )
        session.flush()
        event = session.add_event(
            aggregate_type="order", aggregate_id=order.id, event_type="X", payload={}
        )
    assert event.aggregate_id == "1"
