"""The table-less outbox's messages sent with the COMMIT, in one round trip (psycopg 3).

A separate ``SELECT pg_logical_emit_message(...)`` costs a round trip of its own:
1.35x a bare one-row transaction here before any work (``bench/pg_write_overhead.py``,
``floor``), against a target of 1.3x for the whole mode. Events the session writes
when it commits are therefore handed to the connection instead (:func:`defer`), and
sent, at the moment SQLAlchemy commits the DBAPI connection (its ``commit`` event,
after every flush and ``before_commit`` hook), in a psycopg pipeline together with
the COMMIT: both reach the server in one write and are answered in one read. Then
SQLAlchemy's own ``commit()`` finds the connection idle and sends nothing.

Only where that commit is certain: a sync psycopg connection, not in autocommit, of
a session that owns its transaction (bound to an Engine, not two-phase; the caller
checks the session, :func:`defer` the connection). Everything else emits at once, as
before. A message failing in the pipeline fails the COMMIT with it: the transaction
is not committed, as if the ``SELECT`` had failed. :func:`left_over` finds messages
that no commit took (a path that must not exist): the session raises rather than
lose them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from ._pg_message import statements
from .event import OutboxEvent

__all__ = ["defer", "left_over"]

_KEY = "transactional_outbox.messages_at_commit"


def defer(
    session: Session,
    table: sa.Table,
    conn: sa.Connection,
    events: Sequence[OutboxEvent],
    prefix: str,
) -> dict[Any, Any] | None:
    """Hand ``events`` to ``conn``'s COMMIT and return the connection's ``info`` (for
    :func:`left_over`); None (nothing done) where the commit may not carry them: the
    caller emits them now."""
    # This commit must end in the DBAPI connection's COMMIT: a root transaction of a
    # session bound to an Engine (not joined to a caller's Connection), not two-phase.
    bind = session.get_bind(clause=table)
    if not isinstance(bind, sa.Engine) or session.twophase or session.in_nested_transaction():
        return None
    if conn.dialect.driver != "psycopg" or conn.dialect.is_async:
        return None
    raw: Any = conn.connection.dbapi_connection
    if raw is None or getattr(raw, "autocommit", True) or not hasattr(raw, "pipeline"):
        return None
    engine = conn.engine
    if not sa_event.contains(engine, "commit", _send_with_commit):
        # Per engine, on first use: a class-wide listener would put every engine of
        # the application on SQLAlchemy's slower with-events path. A connection joins
        # its engine's listeners at each event, so this one's COMMIT sees it already.
        sa_event.listen(engine, "commit", _send_with_commit)
        sa_event.listen(engine, "rollback", _forget_at_rollback)
    info = conn.info
    info.setdefault(_KEY, []).extend(statements(events, prefix))
    return info


def left_over(info: dict[Any, Any]) -> int:
    """Messages handed over with ``info`` that no COMMIT carried (and forgets them)."""
    pending = info.pop(_KEY, None)
    return len(pending) if pending else 0


def _send_with_commit(conn: sa.Connection) -> None:
    pending: list[tuple[str, dict[str, Any]]] | None = conn.info.pop(_KEY, None)
    if not pending:
        return
    raw: Any = conn.connection.dbapi_connection
    # COMMIT as a statement of the pipeline, not raw.commit(): that syncs on its own,
    # and the pipeline's exit syncs again (two round trips where one does).
    with raw.pipeline(), raw.cursor() as cur:
        for sql, params in pending:
            cur.execute(sql, params)
        cur.execute("COMMIT")


def _forget_at_rollback(conn: sa.Connection) -> None:
    conn.info.pop(_KEY, None)
