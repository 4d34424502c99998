"""CPU cost of reading the binlog: the relay's own reader vs the library-based one it replaced.

Writes N one-event transactions (INSERT + DELETE on the outbox, as the SDK
does, optionally with a business row in another table of the same
transaction) into the stack's binlog, then reads the same range twice in this
process, each to the end, with a counting sink:

* ``old``: the source as it was before (python-mysql-replication framing,
  the generated row decoder), loaded from git (``--old-rev``);
* ``new``: :class:`BinlogSource` as it is now.

Prints CPU µs per transaction (``time.process_time``: the machine is shared)
and transactions per CPU second for each.

    PYTHONPATH=src python bench/reader_speed.py --txns 20000 [--noise] [--events 1] [--generic]

``--generic`` also reads with the generic row decoder in place of the
generated one, to show what the generated code buys.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import threading
import time
import types
import uuid
from datetime import UTC, datetime
from pathlib import Path

from _common import HOST, PASSWORD, PORT, USER, bench_database, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from transactional_outbox.relay.channel import SourceBatch  # noqa: E402
from transactional_outbox.relay.mysql.source import BinlogSource, SourceSettings  # noqa: E402
from transactional_outbox.relay.position import BinlogPosition  # noqa: E402
from transactional_outbox.relay.routing import TopicRouter  # noqa: E402

BUSINESS_DDL = "CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(64))"


def write(db: str, txns: int, events: int, noise: bool, writers: int) -> None:
    """``txns`` transactions of ``events`` outbox rows each, from ``writers`` connections,
    many transactions per round trip (multi-statement)."""
    payload = b"x" * 200
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def one(n: int) -> None:
        conn = connect(db, multi=True)
        with conn.cursor() as cur:
            done = 0
            while done < n:
                stmts = []
                for _ in range(min(max(1, 50 // events), n - done)):
                    ids = [uuid.uuid4().bytes for _ in range(events)]
                    values = ",".join(
                        f"(0x{i.hex()},'order','a{done}','Placed',0x{payload.hex()},'{{}}','{now}')"
                        for i in ids
                    )
                    stmts.append("BEGIN")
                    if noise:
                        stmts.append("INSERT INTO orders (note) VALUES ('n')")
                    stmts.append(f"INSERT INTO outbox VALUES {values}")
                    stmts.append(
                        "DELETE FROM outbox WHERE id IN ("
                        + ",".join(f"0x{i.hex()}" for i in ids)
                        + ")"
                    )
                    stmts.append("COMMIT")
                    done += 1
                cur.execute(";".join(stmts))
                while cur.nextset():
                    pass
        conn.close()

    per = [txns // writers + (1 if k < txns % writers else 0) for k in range(writers)]
    threads = [threading.Thread(target=one, args=(n,)) for n in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def master_status() -> tuple[str, int]:
    with connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    return row[0], row[1]


class CountingSink:
    """Counts records; refuses (ends the read) once a commit reaches ``end``."""

    def __init__(self, end: tuple[str, int]) -> None:
        self.end = end
        self.records = 0
        self.batches = 0
        self.error: BaseException | None = None

    def put(self, batch: SourceBatch) -> bool:
        self.records += len(batch.records)
        self.batches += 1
        c = batch.commit
        return not (c is not None and (c.file, c.pos) >= self.end)

    def fail(self, error: BaseException) -> None:
        self.error = error

    def close(self) -> None:
        pass


def old_source_class(rev: str) -> type:
    """``BinlogSource`` as it was at ``rev``, loaded beside the current package."""
    text = subprocess.run(
        ["git", "show", f"{rev}:src/transactional_outbox/relay/source.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = "transactional_outbox.relay._old_source"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = types.ModuleType(name)
    module.__package__ = "transactional_outbox.relay"
    sys.modules[name] = module
    exec(compile(text, f"<{rev}:source.py>", "exec"), module.__dict__)
    # The decoder now takes a per-reader memo where it took the router.
    from transactional_outbox.relay.mysql.rowdecoder import RowMemo, decode_rows

    memos: dict[int, RowMemo] = {}

    def decode_with_router(data: bytes, plan: object, router: TopicRouter) -> object:
        memo = memos.get(id(router))
        if memo is None:
            memo = memos[id(router)] = RowMemo(router)
        return decode_rows(data, plan, memo)  # type: ignore[arg-type]

    module.decode_rows = decode_with_router
    return module.BinlogSource  # type: ignore[no-any-return]


def use_generic_decoder() -> None:
    """Make every new row plan decode with the generic, column-by-column decoder."""
    from transactional_outbox.relay.mysql import rowdecoder

    def generic(readers: tuple[tuple[int, int], ...], index: dict[str, int], nb: int) -> object:
        plan = rowdecoder.RowPlan(readers, index, nb)
        return lambda data, memo: rowdecoder.decode_rows_generic(data, plan, memo)

    # A measurement hook, not an API: swap the generator, drop the plans made so far.
    rowdecoder.compile_decoder = generic  # type: ignore[assignment]
    rowdecoder._plan_for.cache_clear()


def source_settings(db: str, *, server_id: int) -> SourceSettings:
    """The reader's settings for the outbox table of database ``db`` on the stack."""
    return SourceSettings(
        host=HOST,
        port=PORT,
        user=USER,
        password=PASSWORD,
        server_id=server_id,
        schema=db,
        table="outbox",
        is_mariadb=True,
    )


def timed(cls: type, db: str, start: tuple[str, int], end: tuple[str, int]) -> tuple[float, int]:
    settings = source_settings(db, server_id=5901)
    sink = CountingSink(end)
    source = cls(
        settings,
        sink,
        BinlogPosition(file=start[0], pos=start[1]),
        router=TopicRouter(),
        use_gtid=False,
    )
    cpu = time.process_time()
    source.run()
    cpu = time.process_time() - cpu
    if sink.error is not None:
        raise sink.error
    return cpu, sink.records


def timed_process(
    db: str, start: tuple[str, int], end: tuple[str, int]
) -> tuple[float, float, int]:
    """The new reader as the relay runs it by default: in a child process, batches
    over a pipe into a Channel drained by asyncio. (parent CPU, child CPU, records)."""
    import asyncio
    import resource

    from transactional_outbox.relay.channel import Channel
    from transactional_outbox.relay.mysql.reader_process import ProcessSource

    settings = source_settings(db, server_id=5903)

    async def run() -> int:
        channel = Channel(asyncio.get_running_loop(), max_events=20_000)
        source = ProcessSource(
            settings,
            channel,
            BinlogPosition(file=start[0], pos=start[1]),
            router=TopicRouter(),
            use_gtid=False,
        )
        source.start()
        records = 0
        try:
            while True:
                for batch in await channel.get():
                    records += len(batch.records)
                    c = batch.commit
                    if c is not None and (c.file, c.pos) >= end:
                        return records
        finally:
            source.stop()
            await asyncio.to_thread(source.join, 10)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time()
    records = asyncio.run(run())
    cpu = time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu, child, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--txns", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=1, help="outbox rows per transaction")
    parser.add_argument("--noise", action="store_true", help="a business row in each txn")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--old-rev", default="ce1746f", help="git revision of the old source")
    parser.add_argument("--skip-old", action="store_true")
    parser.add_argument(
        "--process", action="store_true", help="also the new reader in its child process"
    )
    parser.add_argument(
        "--generic",
        action="store_true",
        help="also the new reader with the generic row decoder instead of the generated one",
    )
    args = parser.parse_args()
    db = f"bench_reader_{uuid.uuid4().hex[:8]}"
    with bench_database(db):
        with connect(db) as conn, conn.cursor() as cur:
            cur.execute(BUSINESS_DDL)
        start = master_status()
        t = time.monotonic()
        # Several writers' multi-row DELETEs deadlock on the outbox's gaps: one
        # writer when transactions carry several events.
        write(db, args.txns, args.events, args.noise, args.writers if args.events == 1 else 1)
        wrote = time.monotonic() - t
        end = master_status()
        print(
            f"wrote {args.txns} transactions x {args.events} events"
            f"{' + 1 business row' if args.noise else ''} in {wrote:.1f}s "
            f"({args.txns / wrote:.0f} txn/s); binlog {start} .. {end}"
        )
        readers: list[tuple[str, type | None]] = [("new (own protocol + parser)", BinlogSource)]
        if not args.skip_old:
            readers.insert(0, (f"old (python-mysql-replication, {args.old_rev})", None))
        if args.generic:
            readers.append(("new, generic row decoder", BinlogSource))
        for label, cls in readers:
            if cls is None:
                cls = old_source_class(args.old_rev)
            if "generic" in label:
                use_generic_decoder()
            cpu, records = timed(cls, db, start, end)
            expected = args.txns * args.events
            status = "" if records == expected else f"  (read {records} records, not {expected})"
            print(
                f"{label:45s} {cpu:7.2f} s CPU  {cpu / args.txns * 1e6:8.1f} µs/txn  "
                f"{args.txns / cpu:9.0f} txn/CPU-s{status}"
            )
        if args.process:
            parent, child, records = timed_process(db, start, end)
            n = args.txns
            print(
                f"{'new, child process (--reader process)':45s} child {child:.2f} s "
                f"({child / n * 1e6:.1f} µs/txn), relay side {parent:.2f} s "
                f"({parent / n * 1e6:.1f} µs/txn), {records} records"
            )


if __name__ == "__main__":
    main()
