"""Startup checks of the PostgreSQL source (relay/postgres/checks.py) on real servers.

Each misconfiguration raises one error naming the setting; a slot gone while the
relay ran before is a :class:`SlotLostError` (exit 3), never a silent new slot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from outbox_dev.pg import ScratchPostgres
from tests._pg import OUTBOX_DDL, PgDb, db, make_db, pg, start_server
from transactional_outbox import outbox_table
from transactional_outbox.exceptions import (
    CheckpointError,
    ConfigurationError,
    ServerConfigurationError,
)
from transactional_outbox.relay.postgres import (
    PgConnectParams,
    PgServerError,
    PgWire,
    SlotLostError,
    check_role,
    check_server,
    check_start_lsn,
    check_tables,
    ensure_publication,
    ensure_slot,
)

__all__ = ["db", "pg"]  # fixtures

OUTBOX = [("public", "outbox")]


@pytest.fixture(scope="module")
def small() -> Iterator[ScratchPostgres]:
    """A server of its own with one replication slot and one WAL sender (global state)."""
    server = start_server(max_replication_slots=1, max_wal_senders=1)
    try:
        yield server
    finally:
        server.destroy()


def test_a_good_setup_passes_and_creates_the_publication_and_slot(db: PgDb) -> None:
    outbox_table(sa.MetaData()).create(db.engine)
    conn = db.wire()
    try:
        check_server(conn)
        check_role(conn)
        check_tables(conn, OUTBOX, setting="outbox_tables")
        assert ensure_publication(conn, db.publication, OUTBOX, create=True)
        assert not ensure_publication(conn, db.publication, OUTBOX, create=True)
        slot = ensure_slot(conn, db.slot, ran_before=False, create=True)
        assert slot.created and slot.confirmed_flush_lsn > 0
        again = ensure_slot(conn, db.slot, ran_before=True, create=True)
        assert not again.created and again.confirmed_flush_lsn == slot.confirmed_flush_lsn
    finally:
        conn.close()


def test_missing_or_wrong_shaped_tables_name_the_setting_and_column(db: PgDb) -> None:
    db.sql(OUTBOX_DDL.format(name="outbox").replace("payload bytea", "payload integer"))
    conn = db.wire()
    try:
        with pytest.raises(ConfigurationError, match=r"outbox_tables: .*public\.nope does not"):
            check_tables(conn, [("public", "nope")], setting="outbox_tables")
        with pytest.raises(
            ConfigurationError, match=r"outbox_tables: column 'payload'.* is oid 23"
        ):
            check_tables(conn, OUTBOX, setting="outbox_tables")
        db.sql("DROP TABLE outbox")
        db.sql(OUTBOX_DDL.format(name="outbox").replace("headers text,", ""))
        with pytest.raises(ConfigurationError, match="no column 'headers'"):
            check_tables(conn, OUTBOX, setting="outbox_tables")
    finally:
        conn.close()


def test_a_publication_with_other_tables_is_refused(db: PgDb) -> None:
    db.sql(OUTBOX_DDL.format(name="outbox"))
    db.sql("CREATE TABLE orders (id int)")
    db.sql(f"CREATE PUBLICATION {db.publication} FOR TABLE outbox, orders")
    conn = db.wire()
    try:
        with pytest.raises(ConfigurationError, match=r"pg_publication: .*public\.orders"):
            ensure_publication(conn, db.publication, OUTBOX, create=True)
        with pytest.raises(ConfigurationError, match=r"pg_publication: .*does not exist and pg_cr"):
            ensure_publication(conn, "other_pub", OUTBOX, create=False)
    finally:
        conn.close()


def test_a_role_without_replication_or_ownership_is_told_what_to_grant(
    db: PgDb, pg: ScratchPostgres
) -> None:
    pg.psql("DROP ROLE IF EXISTS plain; CREATE ROLE plain LOGIN PASSWORD 'plain'")
    db.sql(OUTBOX_DDL.format(name="outbox"))
    params = PgConnectParams.from_url(pg.url(db.name).replace("outbox:outbox@", "plain:plain@"))
    conn = PgWire(params)
    try:
        with pytest.raises(ConfigurationError, match="ALTER ROLE plain REPLICATION"):
            check_role(conn)
        with pytest.raises(ConfigurationError, match=r"does not own public\.outbox"):
            ensure_publication(conn, db.publication, OUTBOX, create=True)
    finally:
        conn.close()
        pg.psql(f"REVOKE ALL ON DATABASE {db.name} FROM plain")


def test_a_slot_gone_after_the_relay_ran_is_slot_lost_never_a_new_slot(db: PgDb) -> None:
    conn = db.wire()
    try:
        ensure_slot(conn, db.slot, ran_before=False, create=True)
        conn.query(f"SELECT pg_drop_replication_slot('{db.slot}')")
        with pytest.raises(SlotLostError, match="is gone but this relay ran before"):
            ensure_slot(conn, db.slot, ran_before=True, create=True)
        assert not conn.query(f"SELECT 1 FROM pg_replication_slots WHERE slot_name = '{db.slot}'")
        with pytest.raises(ConfigurationError, match=r"pg_slot: .*does not exist and pg_create"):
            ensure_slot(conn, db.slot, ran_before=False, create=False)
        with pytest.raises(ConfigurationError, match="pg_slot: 'Bad-Name' is no slot name"):
            ensure_slot(conn, "Bad-Name", ran_before=False, create=True)
        conn.query(f"SELECT pg_create_logical_replication_slot('{db.slot}', 'test_decoding')")
        with pytest.raises(ConfigurationError, match="plugin test_decoding"):
            ensure_slot(conn, db.slot, ran_before=True, create=True)
    finally:
        conn.close()


def test_no_free_slot_or_wal_sender_names_the_server_setting(small: ScratchPostgres) -> None:
    with contextlib.contextmanager(make_db)(small) as database:
        conn = database.wire()
        try:
            ensure_slot(conn, "first", ran_before=False, create=True)
            with pytest.raises(ServerConfigurationError, match="max_replication_slots"):
                ensure_slot(conn, "second", ran_before=False, create=True)
            streaming = PgWire(database.params, replication=True)  # the one WAL sender
            try:
                with pytest.raises(ServerConfigurationError, match="max_wal_senders"):
                    check_server(conn)
                with pytest.raises(PgServerError, match="53300"):
                    PgWire(database.params, replication=True)
            finally:
                streaming.close()
        finally:
            conn.close()


def test_wal_level_not_logical_names_the_setting(small: ScratchPostgres) -> None:
    small.psql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
    small.settings["wal_level"] = "replica"
    small.restart()
    try:
        conn = PgWire(PgConnectParams.from_url(small.url("postgres")))
        try:
            with pytest.raises(ServerConfigurationError, match="wal_level: is 'replica'"):
                check_server(conn)
        finally:
            conn.close()
    finally:
        small.settings["wal_level"] = "logical"
        small.restart()


def test_url_parsing_names_the_setting_and_hides_the_password() -> None:
    params = PgConnectParams.from_url("postgresql://u:s%40cret@db.example:6543/app?sslmode=require")
    assert (params.host, params.port, params.user, params.database) == (
        "db.example",
        6543,
        "u",
        "app",
    )
    assert params.password == "s@cret" and "s@cret" not in repr(params)
    with pytest.raises(ConfigurationError, match="database_url: sslmode='bogus'"):
        PgConnectParams.from_url("postgresql://u@h/app?sslmode=bogus")
    with pytest.raises(ConfigurationError, match="database_url: names no database"):
        PgConnectParams.from_url("postgresql://u@h")


def test_a_checkpoint_beyond_the_servers_wal_is_refused(db: PgDb) -> None:
    conn = db.wire()
    try:
        slot = ensure_slot(conn, db.slot, ran_before=False, create=True)
        check_start_lsn(conn, slot.confirmed_flush_lsn)  # the slot's own: fine
        with pytest.raises(CheckpointError, match="beyond this server's WAL"):
            check_start_lsn(conn, slot.confirmed_flush_lsn + (1 << 40))
    finally:
        conn.close()
