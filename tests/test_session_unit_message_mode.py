"""The table-less mode's settings: ``outbox_mode`` / ``outbox_message_prefix`` refused
where they cannot work, with the setting named (no server: SQLite and dialect objects)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from transactional_outbox import OutboxSession, enable_outbox, outbox_table
from transactional_outbox._pg_message import check_dialect
from transactional_outbox.exceptions import ConfigurationError


def _setting(call: object) -> str:
    with pytest.raises(ConfigurationError) as info:
        call()  # type: ignore[operator]
    return info.value.setting


def test_unknown_mode_names_outbox_mode() -> None:
    assert _setting(lambda: OutboxSession(outbox_mode="rows")) == "outbox_mode"


def test_empty_prefix_names_outbox_message_prefix() -> None:
    call = lambda: OutboxSession(outbox_mode="message", outbox_message_prefix="")  # noqa: E731
    assert _setting(call) == "outbox_message_prefix"


def test_keep_rows_has_no_rows_to_keep_in_message_mode() -> None:
    call = lambda: OutboxSession(outbox_mode="message", outbox_keep_rows=True)  # noqa: E731
    assert _setting(call) == "outbox_keep_rows"


def test_an_engine_of_another_database_is_refused_at_once() -> None:
    engine = sa.create_engine("sqlite://")
    assert _setting(lambda: OutboxSession(engine, outbox_mode="message")) == "outbox_mode"
    factory = enable_outbox(sessionmaker(engine), mode="message")
    assert _setting(factory) == "outbox_mode"


def test_a_bind_found_at_write_time_is_checked_there() -> None:
    # No bind at construction (binds by table): the flush checks the connection's dialect.
    engine = sa.create_engine("sqlite://")
    table = outbox_table(sa.MetaData())
    session = OutboxSession(binds={table: engine}, outbox_table=table, outbox_mode="message")
    session.add_event(aggregate_type="a", aggregate_id=1, event_type="T", payload={})
    with pytest.raises(ConfigurationError) as info:
        session.flush()
    assert info.value.setting == "outbox_mode" and "sqlite" in str(info.value)
    session.close()


@pytest.mark.parametrize(
    ("version", "refused"), [((13, 14), True), ((14, 0), False), (None, False)]
)
def test_postgresql_before_14_is_refused(version: tuple[int, ...] | None, refused: bool) -> None:
    dialect = sa.create_engine("postgresql+psycopg://u@127.0.0.1/d").dialect  # no connection
    dialect.server_version_info = version
    if refused:
        assert _setting(lambda: check_dialect(dialect)) == "outbox_mode"
    else:
        check_dialect(dialect)


def test_table_mode_is_the_default_and_works_anywhere() -> None:
    engine = sa.create_engine("sqlite://")
    outbox_table(md := sa.MetaData())
    md.create_all(engine)
    with sessionmaker(engine, class_=OutboxSession)() as session:
        session.add_event(aggregate_type="a", aggregate_id=1, event_type="T", payload={})
        session.commit()
