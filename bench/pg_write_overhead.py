"""Write overhead of the outbox on PostgreSQL: table mode vs table-less (message) mode.

On a scratch PostgreSQL 15 (``outbox_dev.pg``, ``wal_level=logical``, a
pgoutput slot present as with a relay), one SQLAlchemy session (psycopg 3)
commits N transactions of each kind, one of each in turn so the shared
machine's noise hits all alike:

* ``bare``: one business row (``INSERT INTO orders``), commit;
* ``table``: the same plus ``add_event`` (INSERT + DELETE in the outbox table);
* ``floor``: the same plus ``SELECT 1``: what one more round trip through SQLAlchemy
  costs, the least any way of writing the event at flush can add;
* ``message``: the same plus ``add_event`` in a session with
  ``outbox_mode="message"`` (the event as ``pg_logical_emit_message(true, ...)``).

Prints the median (and mean) µs per transaction of each and the ratio to bare;
then the same three as DO loops inside the server (no client round trips).

    python bench/pg_write_overhead.py [--txns 2000] [--rounds 5] [--port 25438]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from outbox_dev.pg import ScratchPostgres  # noqa: E402
from transactional_outbox import OutboxEvent, OutboxSession, outbox_table  # noqa: E402
from transactional_outbox._pg_message import encode_message  # noqa: E402

PAYLOAD = {"order": 1, "total": "10.00", "lines": [{"sku": "A", "qty": 2}]}


def server_side(server: ScratchPostgres, txns: int, rounds: int) -> None:
    """The same three kinds as one DO loop each, inside the server: no round trips,
    so what is left is the server's own cost of each way to write an event."""
    event = OutboxEvent.create(
        aggregate_type="order", aggregate_id="1", event_type="Placed", payload=PAYLOAD
    )
    payload, content = event.payload.hex(), encode_message(event).hex()
    bare = "INSERT INTO orders (total) VALUES ('10.00');"
    row = (
        "INSERT INTO outbox VALUES (uuid_send(gen_random_uuid()), 'order', '1', 'Placed', "
        f"'\\x{payload}'::bytea, '{{\"content-type\":\"application/json\"}}', "
        "now()::timestamp) RETURNING id INTO x; DELETE FROM outbox WHERE id = x;"
    )
    message = f"PERFORM pg_logical_emit_message(true, 'outbox', '\\x{content}'::bytea);"
    kinds = {"bare": bare, "table": bare + row, "message": bare + message}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for name, body in kinds.items():
            sql = f"DO $$ DECLARE x bytea; BEGIN FOR i IN 1..{txns} LOOP {body} COMMIT; "
            t = time.perf_counter()
            server.psql(sql + "END LOOP; END $$", database="outbox")
            times[name].append((time.perf_counter() - t) / txns)
    base = statistics.median(times["bare"])
    print(f"inside the server (DO loop, {rounds} rounds x {txns} transactions per kind):")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:8} median {med * 1e6:7.1f} µs/txn  {med / base:5.2f}x bare")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--txns", type=int, default=2000, help="per kind and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    server = ScratchPostgres(Path(tempfile.mkdtemp(prefix="outbox-pg-bench-")), args.port or None)
    server.start()
    try:
        engine = sa.create_engine(server.url(driver="psycopg"))
        md = sa.MetaData()
        outbox = outbox_table(md)
        orders = sa.Table(
            "orders",
            md,
            sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("total", sa.Text, nullable=False),
        )
        md.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE PUBLICATION pub FOR TABLE outbox"))
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_create_logical_replication_slot('bench', 'pgoutput')"))
        factory = sessionmaker(engine, class_=OutboxSession, outbox_table=outbox)
        messages = sessionmaker(engine, class_=OutboxSession, outbox_mode="message")
        insert = orders.insert()

        def bare(session: OutboxSession) -> None:
            session.execute(insert, {"total": "10.00"})

        def table(session: OutboxSession) -> None:
            session.execute(insert, {"total": "10.00"})
            session.add_event(
                aggregate_type="order", aggregate_id="1", event_type="Placed", payload=PAYLOAD
            )

        def floor(session: OutboxSession) -> None:
            session.execute(insert, {"total": "10.00"})
            session.execute(select_1)

        select_1 = sa.text("SELECT 1")
        kinds = {"bare": bare, "floor": floor, "table": table, "message": table}
        names = list(kinds)
        with factory() as rows_session, messages() as message_session:
            sessions = {"message": message_session}
            sessions.update(dict.fromkeys(("bare", "floor", "table"), rows_session))
            for _ in range(200):  # warm up the connection and statement caches
                for name, fn in kinds.items():
                    fn(sessions[name])
                    sessions[name].commit()
            # One transaction of each kind in turn (rotating which goes first), so
            # the shared machine's load drifts over all kinds alike.
            times: dict[str, list[float]] = {k: [] for k in kinds}
            perf = time.perf_counter
            for i in range(args.txns * args.rounds):
                for name in names[i % 4 :] + names[: i % 4]:
                    fn, session = kinds[name], sessions[name]
                    t = perf()
                    fn(session)
                    session.commit()
                    times[name].append(perf() - t)
        base = statistics.median(times["bare"])
        print(f"{args.txns * args.rounds} transactions per kind, interleaved, one session:")
        for name, values in times.items():
            med = statistics.median(values)
            mean = statistics.fmean(values)
            print(
                f"  {name:8} median {med * 1e6:7.1f} µs/txn  {med / base:5.2f}x bare  "
                f"(mean {mean * 1e6:.0f} µs, {mean / statistics.fmean(times['bare']):.2f}x)"
            )
        engine.dispose()
        server_side(server, max(args.txns * 10, 20_000), args.rounds)
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
