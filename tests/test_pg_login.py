"""Logins of the PostgreSQL reader's own protocol client (relay/postgres/wire.py) on real
servers: md5, cleartext password, SCRAM (the other tests' server), TLS, wrong passwords."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from outbox_dev.pg import ScratchPostgres
from tests._pg import ListSink, PgDb, expected, make_db
from tests.polling import wait_until_sync
from transactional_outbox import OutboxEvent, outbox_table
from transactional_outbox._pg_message import emit_events
from transactional_outbox.exceptions import ConfigurationError
from transactional_outbox.relay.postgres import (
    PgConnectParams,
    PgServerError,
    PgSource,
    PgSourceSettings,
    PgWire,
)
from transactional_outbox.relay.routing import TopicRouter


@pytest.mark.parametrize("auth", ["md5", "password"])
def test_md5_and_cleartext_logins(auth: str) -> None:
    server = ScratchPostgres(
        Path(tempfile.mkdtemp(prefix="outbox-pg-")),
        auth=auth,
        settings={"password_encryption": "md5" if auth == "md5" else "scram-sha-256"},
    )
    server.start()
    try:
        conn = PgWire(PgConnectParams.from_url(server.url("postgres")))
        try:
            assert conn.query("SELECT current_user") == [("outbox",)]
        finally:
            conn.close()
        wrong = PgConnectParams.from_url(server.url("postgres").replace(":outbox@", ":nope@"))
        with pytest.raises(PgServerError, match="28P01"):
            PgWire(wrong)
    finally:
        server.destroy()


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [
            *("openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return cert, key


def test_tls_logins_and_a_replication_stream_over_tls() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="outbox-pg-"))
    cert, key = _certificate(workdir)
    tls = {"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)}
    server = ScratchPostgres(workdir, auth="scram-sha-256", settings=tls)
    server.start()
    try:
        for mode in ("require", f"verify-full&sslrootcert={cert}"):
            conn = PgWire(PgConnectParams.from_url(server.url("postgres") + f"?sslmode={mode}"))
            try:
                rows = conn.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                assert rows == [("t",)]
            finally:
                conn.close()
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):  # not a trusted CA
            PgWire(PgConnectParams.from_url(server.url("postgres") + "?sslmode=verify-full"))
        with contextlib.contextmanager(make_db)(server) as db:
            outbox_table(sa.MetaData()).create(db.engine)
            db.prepare([("public", "outbox")])
            tls_db = PgConnectParams.from_url(server.url(db.name) + "?sslmode=require")
            event = OutboxEvent.create(
                aggregate_type="a", aggregate_id="1", event_type="t", payload=b"x" * 300_000
            )
            with db.engine.begin() as conn_sa:
                emit_events(conn_sa, [event])
            sink = ListSink()
            source = _source(db, tls_db, sink)
            try:
                wait_until_sync(lambda: sink.error or sink.records, what="the event over TLS")
                assert sink.records == [expected(event, f"{db.name}.outbox")]
            finally:
                source.stop()
                source.join(10)
    finally:
        server.destroy()


def test_sslmode_require_against_a_server_without_tls_names_the_setting() -> None:
    server = ScratchPostgres(Path(tempfile.mkdtemp(prefix="outbox-pg-")))
    server.start()
    try:
        with pytest.raises(ConfigurationError, match="database_url: sslmode=require but"):
            PgWire(PgConnectParams.from_url(server.url("postgres") + "?sslmode=require"))
        conn = PgWire(PgConnectParams.from_url(server.url("postgres") + "?sslmode=prefer"))
        conn.close()
    finally:
        server.destroy()


def _source(db: PgDb, params: PgConnectParams, sink: ListSink) -> PgSource:
    settings = PgSourceSettings(
        connect=params,
        slot=db.slot,
        publication=db.publication,
        tables=(("public", "outbox"),),
        prefixes=("outbox",),
        status_interval_seconds=0.1,
    )
    source = PgSource(settings, sink, 0, router=TopicRouter())
    source.start()
    return source
