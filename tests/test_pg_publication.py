"""The relay's publication on a real PostgreSQL 15 (relay/postgres/publication.py).

PostgreSQL leaves a table's rows out of the logical stream, with no error, when the
publication stops covering it; and it decodes every transaction with the publication as
it was then, so a restart cannot bring those rows back. These tests hold the relay to
refusing such a publication at start with advice that works as written, to noticing a
change while it streams (naming the LSN after which rows may be missing), and to telling
a dropped publication from a lost slot.
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from tests._pg import OUTBOX_DDL, PgDb, db, expected, pg
from tests.polling import wait_until_sync
from transactional_outbox import ConfigurationError, OutboxEvent, OutboxSession, outbox_table
from transactional_outbox.relay.postgres import (
    PublicationGoneError,
    SlotLostError,
    check_tables,
    ensure_publication,
    ensure_slot,
    format_lsn,
    parse_lsn,
)
from transactional_outbox.relay.postgres.pattern import (
    ensure_all_tables_publication,
    matching_tables,
)
from transactional_outbox.relay.postgres.publication import PublicationWatch, publication_state

__all__ = ["db", "pg"]  # fixtures

OUTBOX = [("public", "outbox")]


def _advice(error: BaseException, start: str = "ALTER ") -> str:
    """The SQL an error advises, as written (up to its end or the closing parenthesis)."""
    text = str(error)
    sql = text[text.index(start) :]
    return sql.split("), then ")[0]


def _write_one(db: PgDb) -> OutboxEvent:
    event = OutboxEvent.create(aggregate_type="o", aggregate_id="1", event_type="E", payload={})
    factory = sa.orm.sessionmaker(db.engine, class_=OutboxSession)
    with factory.begin() as session:
        session.add_events([event])
    return event


@pytest.mark.parametrize(
    "create",
    [
        "FOR TABLE outbox WHERE (aggregatetype <> 'x') WITH (publish = 'insert')",
        "FOR TABLE outbox (id, payload) WITH (publish = 'insert')",
        "FOR TABLE outbox WITH (publish = 'update, delete')",
        "WITH (publish = 'insert')",
    ],
    ids=["row-filter", "column-list", "no-inserts", "no-table"],
)
def test_a_publication_that_would_hide_rows_is_refused_and_the_advice_works(
    db: PgDb, create: str
) -> None:
    db.sql(OUTBOX_DDL.format(name="outbox"))
    db.sql(f"CREATE PUBLICATION {db.publication} {create}")
    conn = db.wire()
    try:
        with pytest.raises(ConfigurationError, match=r"pg_publication: .*unfiltered") as info:
            ensure_publication(conn, db.publication, OUTBOX, create=True)
        assert "DROP PUBLICATION" not in str(info.value)  # keeps it: its WAL stays decodable
        db.sql(_advice(info.value))  # as written
        assert not ensure_publication(conn, db.publication, OUTBOX, create=True)
    finally:
        conn.close()


def test_unlogged_outbox_tables_are_refused_by_name_and_by_pattern(db: PgDb) -> None:
    db.sql(OUTBOX_DDL.format(name="outbox").replace("CREATE TABLE", "CREATE UNLOGGED TABLE"))
    conn = db.wire()
    try:
        with pytest.raises(ConfigurationError, match=r"outbox_table: .*UNLOGGED") as info:
            check_tables(conn, OUTBOX, setting="outbox_table")
        with pytest.raises(ConfigurationError, match=r"outbox_table_pattern: public\.outbox"):
            matching_tables(conn, re.compile(r"public\.out.*"), listed=())
        db.sql(_advice(info.value))  # ALTER TABLE ... SET LOGGED, as written
        check_tables(conn, OUTBOX, setting="outbox_table")
        assert matching_tables(conn, re.compile(r"public\.out.*"), listed=()) == (
            [("public", "outbox")],
            [],
        )
    finally:
        conn.close()


def _watch(db: PgDb, *, pattern: str | None = None) -> PublicationWatch:
    conn = db.wire()
    try:
        oid = publication_state(conn, db.publication).oid
        lsn = parse_lsn(str(conn.query("SELECT pg_current_wal_lsn()")[0][0]))
    finally:
        conn.close()
    return PublicationWatch(
        db.params,
        name=db.publication,
        slot=db.slot,
        tables=() if pattern else tuple(OUTBOX),
        pattern=pattern,
        oid=oid,
        after=lsn,
    )


def test_the_watch_names_a_change_with_its_lsn_and_a_drop_as_gone(db: PgDb) -> None:
    outbox_table(sa.MetaData()).create(db.engine)
    db.prepare(OUTBOX)
    watch = _watch(db)
    try:
        _write_one(db)
        assert watch.poll() is None
        good = watch.after
        db.sql(f"ALTER PUBLICATION {db.publication} DROP TABLE outbox")
        error = watch.poll()
        assert isinstance(error, ConfigurationError) and error.setting == "pg_publication"
        assert "publishes no table" in str(error)
        assert f"after LSN {format_lsn(good)}" in str(error)
        db.sql(_advice(error))  # the fix, as written
        assert watch.poll() is None and watch.after >= good
        # Dropped and created again: another publication, its WAL before undecodable.
        db.sql(f"DROP PUBLICATION {db.publication}")
        db.sql(f"CREATE PUBLICATION {db.publication} FOR TABLE outbox")
        gone = watch.poll()
        assert isinstance(gone, PublicationGoneError) and "--ignore-checkpoint" in str(gone)
    finally:
        watch.close()


def test_the_watch_of_a_pattern_names_an_unlogged_match_and_a_narrowed_publication(
    db: PgDb,
) -> None:
    db.sql(OUTBOX_DDL.format(name="outbox"))
    db.server.psql(
        f"CREATE PUBLICATION {db.publication} FOR ALL TABLES WITH (publish = 'insert')",
        database=db.name,
    )
    conn = db.wire()
    try:
        ensure_slot(conn, db.slot, ran_before=False, create=True)
    finally:
        conn.close()
    watch = _watch(db, pattern=r"public\.outbox.*")
    try:
        assert watch.poll() is None
        db.sql(OUTBOX_DDL.format(name="outbox_b").replace("CREATE TABLE", "CREATE UNLOGGED TABLE"))
        error = watch.poll()
        assert isinstance(error, ConfigurationError) and "public.outbox_b" in str(error)
        db.sql("ALTER TABLE outbox_b SET LOGGED")
        assert watch.poll() is None
        db.server.psql(
            f"ALTER PUBLICATION {db.publication} SET (publish = 'delete')", database=db.name
        )
        error = watch.poll()
        assert isinstance(error, ConfigurationError) and "every table" in str(error)
        # The fix keeps the publication (one created again could not decode the WAL
        # before it): as written, by its owner; the start's check gives the same.
        conn = db.wire()
        try:
            with pytest.raises(ConfigurationError, match="every table") as start:
                ensure_all_tables_publication(conn, db.publication, create=True)
        finally:
            conn.close()
        assert (
            _advice(start.value)
            == _advice(error)
            == (f"ALTER PUBLICATION \"{db.publication}\" SET (publish = 'insert')")
        )
        db.server.psql(_advice(error), database=db.name)
        assert watch.poll() is None
    finally:
        watch.close()


def test_a_stream_without_its_publication_is_publication_gone_not_slot_lost(db: PgDb) -> None:
    outbox_table(sa.MetaData()).create(db.engine)
    db.prepare(OUTBOX)
    _, sink = db.source(OUTBOX)
    _write_one(db)
    wait_until_sync(lambda: len(sink.records) == 1, what="the first event")
    db.sql(f"DROP PUBLICATION {db.publication}")
    _write_one(db)  # pgoutput looks the publication up for this change, and fails
    wait_until_sync(lambda: sink.error is not None, what="the source to stop")
    assert isinstance(sink.error, PublicationGoneError), sink.error
    assert not isinstance(sink.error, SlotLostError)
    assert f"pg_drop_replication_slot('{db.slot}')" in str(sink.error)


def test_an_outbox_table_recreated_and_added_back_in_one_transaction_keeps_streaming(
    db: PgDb,
) -> None:
    """What docs/relay.md advises for a migration that re-creates the outbox table."""
    outbox_table(sa.MetaData()).create(db.engine)
    db.prepare(OUTBOX)
    watch = _watch(db)
    _, sink = db.source(OUTBOX)
    try:
        _write_one(db)
        wait_until_sync(lambda: len(sink.records) == 1, what="the first event")
        ddl = OUTBOX_DDL.format(name="outbox")
        db.sql(
            f"BEGIN; DROP TABLE outbox; {ddl}; "
            f"ALTER PUBLICATION {db.publication} ADD TABLE outbox; COMMIT"
        )
        assert watch.poll() is None
        _write_one(db)
        wait_until_sync(lambda: len(sink.records) == 2, what="an event of the new table")
        assert sink.error is None
    finally:
        watch.close()


def test_a_partitioned_outbox_table_streams_through_its_root(db: PgDb) -> None:
    ddl = OUTBOX_DDL.format(name="outbox").rstrip().rstrip(")")
    db.sql(f"{ddl}) PARTITION BY HASH (id)")
    for k in range(2):
        part = f"FOR VALUES WITH (MODULUS 2, REMAINDER {k})"
        db.sql(f"CREATE TABLE outbox_p{k} PARTITION OF outbox {part}")
    # A publication made without publish_via_partition_root lists the partitions:
    # refused, and the advice (which sets it) works as written.
    db.sql(f"CREATE PUBLICATION {db.publication} FOR TABLE outbox WITH (publish = 'insert')")
    conn = db.wire()
    try:
        with pytest.raises(ConfigurationError, match=r"public\.outbox_p0") as info:
            ensure_publication(conn, db.publication, OUTBOX, create=True)
        db.sql(_advice(info.value))
        assert not ensure_publication(conn, db.publication, OUTBOX, create=True)
        ensure_slot(conn, db.slot, ran_before=False, create=True)
    finally:
        conn.close()
    _, sink = db.source(OUTBOX)
    events = [_write_one(db) for _ in range(4)]  # both partitions, most likely
    wait_until_sync(lambda: len(sink.records) == 4, what="four events")
    assert sink.error is None
    assert sink.records == [expected(e, "public.outbox") for e in events]
