"""One relay for many outbox tables, or one relay per table (issue 19): what the relays and
the database server spend, and the lag, at the same total event rate.

    .venv/bin/python bench/multi_tables.py [--rates 1000] [--seconds 30] [--tables 10]
        [--modes baseline,Nx1,1xN] [--writers N] [--pattern] [--plot PATH] [--quick]

Against the local stack (./dev/stack start). ``--tables`` (10) databases
``mtb_<run>_<i>``, each with an outbox table. For each rate (``--rates``, total one-event
transactions/s) and mode, the same writes: ``--writers`` paced processes (default one
per 500/s, at most 8, as bench/latency.py) commit ``rate * --seconds`` one-event
insert-then-delete transactions (one round trip each, as ``session.add_event()`` +
commit writes), event *i* into table *i* mod ``--tables``: every table gets the same
share. The modes:

* ``baseline``: the writes with no relay: what the server spends on them alone.
* ``Nx1`` (e.g. ``10x1``): one relay per table (``python -m transactional_outbox.relay``,
  defaults, ``OUTBOX_MYSQL_URL`` naming its database), each its own relay name and topics.
* ``1xN``: one relay for every table (``OUTBOX_OUTBOX_TABLES=mtb_<run>_0.outbox,...``, or
  ``OUTBOX_OUTBOX_TABLE_PATTERN`` with ``--pattern``; topic template with ``{schema}``).
  A relay without those settings (before issue 19) is reported and the mode skipped.

Each relay mode starts its relays at the binlog head and waits for one warm-up event
per table (start-up stays out), then measures from the writers' start until every
event has been received: CPU seconds (user + system, from /proc) of all relay
processes including their binlog reader children (``relay-s``; per second of the window
``relay-core``, per 1,000 committed events ``ms/1k-ev``), their summed peak RSS, of the
MariaDB server process (``server-s``; ``over-base``: minus the baseline's, the relays'
cost to the server, a difference of two runs that other work on the machine swamps), of
the server threads of the relays' binlog dump connections
alone (``dump-s``: their OS threads, ``information_schema.PROCESSLIST.TID``; the
relays log in as a user of their own with the replication grants, so other clients'
dump threads are not counted), and of the broker. ``dumps``: binlog dump threads of
the relays' user. Lag: per-event latency, commit returned → received by a consumer in
this process (aiokafka, every topic, ``fetch_max_wait_ms=5``, one machine clock), as
bench/latency.py measures it; p50/p99/max. ``delivered`` counts committed events
received on their table's topic; the script says which table lost any. ``load``: the
1-minute load average at the end of the run.

Not covered: tables of unequal rates; several events per transaction; a relay behind
(bench/keeps_up.py); other writes on the server (they are read by every relay, so they
would widen the gap); a durable server. The server and broker figures include anything
else running on them during the window (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    HOST,
    OUTBOX_DDL,
    PORT,
    TopicReader,
    connect,
    create_topics,
    master_status,
    one_event_sql,
    paced_writers,
    relay_env,
)
from _common import run_multi as run_sql
from _multi_tables_report import Result, plot, report
from _relay import RelayChild, cpu_by_process
from latency import CATCH_UP, default_writers

from outbox_dev import stack
from transactional_outbox.exceptions import ConfigurationError
from transactional_outbox.relay.config import RelaySettings

HZ = os.sysconf("SC_CLK_TCK")


def writer_main(tables: list[str], w: int, sync: tuple[Any, ...], out: Any) -> None:
    """Child process: commit events w, w+W, ... of ``total`` (W writers, ``rate``/W each), i into
    ``tables[i % len(tables)]``; send back [(id, commit time, table index)] and the late count."""
    ready, go, start, writers, rate, total = sync
    conn = connect(multi=True)
    cur = conn.cursor()
    interval = writers / rate
    commits, late = [], 0
    ready.wait()
    go.wait()
    t_next = start.value + w / rate
    for i in range(w, total, writers):
        now = time.monotonic()
        if now < t_next:
            time.sleep(t_next - now)
        elif now > t_next + max(interval, CATCH_UP):
            t_next, late = now, late + 1  # behind: go on at the pace from here, no burst
        eid, table = uuid.uuid4().bytes, i % len(tables)
        ts = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        payload = json.dumps({"seq": i, "customer": "c-1234", "total": "42.50"})
        run_sql(cur, one_event_sql(eid, f"order-{i % 100}", payload, ts, f"{tables[table]}.outbox"))
        commits.append((eid, time.time(), table))
        t_next += interval
    conn.close()
    out.send((commits, late))


async def write(
    tables: list[str], rate: int, args: argparse.Namespace, at_go: Any
) -> tuple[list[tuple[bytes, float, int]], int]:
    """The paced writes of one mode; ``at_go()`` runs once every writer is connected, just
    before they start. Returns the commits in commit order and the late count."""
    writers = args.writers or default_writers(rate)
    total = round(rate * args.seconds)
    commits, late = await paced_writers(
        writer_main,
        writers,
        lambda w, sync, pipe: (tables, w, (*sync, writers, rate, total), pipe),
        lead=0.05,
        at_go=at_go,
    )
    return sorted(commits, key=lambda c: c[1]), late


class Receiver(TopicReader):
    """Reads every partition of ``topics`` from the start: first receive time and topic per
    event id."""

    def __init__(self, topics: list[str]) -> None:
        super().__init__(topics)
        self.received: dict[bytes, tuple[float, str]] = {}
        self.duplicates = 0

    async def start(self) -> None:
        await create_topics(self.topics, 1)
        await super().start()

    def on_record(self, event_id: bytes, topic: str, now: float) -> None:
        if event_id in self.received:
            self.duplicates += 1
        else:
            self.received[event_id] = (now, topic)

    async def wait_for(self, ids: list[bytes], within: float, relays: list[RelayChild]) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not all(i in self.received for i in ids):
            for relay in relays:
                relay.check_alive()
            await asyncio.sleep(0.05)


def cpu_s(path: str) -> float:
    """User + system CPU seconds of a process or thread (``/proc/<pid>[/task/<tid>]``)."""
    fields = Path(path, "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


class Probe:
    """The server's side: the MariaDB and broker processes, and the relays' dump threads."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.server = int((stack.STATE / "mariadb" / "mariadbd.pid").read_text())
        self.broker = int((stack.STATE / "kafka" / "pid").read_text())
        self.conn = connect()

    def dump_threads(self) -> list[int]:
        """OS thread ids of the binlog dump connections of the relays' user."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT TID FROM information_schema.PROCESSLIST WHERE USER=%s"
                " AND COMMAND LIKE 'Binlog Dump%%'",
                (self.user,),
            )
            return [int(row[0]) for row in cur.fetchall()]

    def sample(self) -> tuple[float, float, dict[int, float]]:
        """CPU seconds so far: server, broker (and children), each dump thread."""
        threads = {}
        for tid in self.dump_threads():
            with contextlib.suppress(OSError):
                threads[tid] = cpu_s(f"/proc/{self.server}/task/{tid}")
        broker = sum(cpu_by_process(self.broker).values())
        return cpu_s(f"/proc/{self.server}"), broker, threads


def relay_envs(kind: str, ctx: dict[str, Any], tag: str) -> list[dict[str, str]]:
    """The environment of each relay of a mode: one per table, or one for all."""
    run_id, tables, start = ctx["run_id"], ctx["tables"], ctx["start"]
    url = f"mysql+pymysql://{ctx['user']}:{ctx['password']}@{HOST}:{PORT}/"
    if kind == "each":
        envs = []
        for i, db in enumerate(tables):
            env = relay_env(db, start, f"mtb-{tag}-{i}", f"mtb{tag}.{db}.{{aggregatetype}}")
            envs.append({**env, "OUTBOX_DATABASE_URL": url + db})
        return envs
    env = relay_env("", start, f"mtb-{tag}", f"mtb{tag}.{{schema}}.{{aggregatetype}}")
    env["OUTBOX_DATABASE_URL"] = url
    if ctx["pattern"]:
        env["OUTBOX_OUTBOX_TABLE_PATTERN"] = rf"mtb_{run_id}_[0-9]+\.outbox"
    else:
        env["OUTBOX_OUTBOX_TABLES"] = ",".join(f"{db}.outbox" for db in tables)
    return [env]


async def run_mode(kind: str, label: str, rate: int, ctx: dict[str, Any]) -> Result:
    """One mode at one rate: relays (none for the baseline), the writes, the drain."""
    args, tables, probe = ctx["args"], ctx["tables"], ctx["probe"]
    tag = f"{ctx['run_id']}-{label}-{rate}"
    relays: list[RelayChild] = []
    receiver: Receiver | None = None
    logs = Path(tempfile.gettempdir())
    samples: dict[str, Any] = {}

    def at_go() -> None:
        samples["t0"] = time.monotonic()
        samples["server0"] = probe.sample()
        samples["relay0"] = [relay.cpu() for relay in relays]

    try:
        if kind != "baseline":
            with connect() as conn, conn.cursor() as cur:
                ctx["start"] = master_status(cur)
            envs = relay_envs(kind, ctx, tag)
            relays = [RelayChild(e, logs / f"bench-mtb-{tag}-{i}.log") for i, e in enumerate(envs)]
            receiver = Receiver([f"mtb{tag}.{db}.order" for db in tables])
            await receiver.start()
            for relay in relays:
                relay.start()
            warm = [uuid.uuid4().bytes for _ in tables]
            with connect(multi=True) as conn, conn.cursor() as cur:
                for eid, db in zip(warm, tables, strict=True):
                    run_sql(cur, one_event_sql(eid, "warm", "{}", "2026-01-01", f"{db}.outbox"))
            await receiver.wait_for(warm, 180, relays)
            if not all(i in receiver.received for i in warm):
                raise SystemExit(f"{label}: warm-up events not received; relay logs {logs}")
        commits, late = await write(tables, rate, args, at_go)
        if receiver is not None:
            await receiver.wait_for([c[0] for c in commits], args.drain, relays)
        t1 = time.monotonic()
        server1, broker1, threads1 = probe.sample()
        server0, broker0, threads0 = samples["server0"]
        span = commits[-1][1] - commits[0][1]
        result = Result(
            mode=label,
            relays=len(relays),
            committed=len(commits),
            achieved=(len(commits) - 1) / span if span > 0 else float("nan"),
            window=t1 - samples["t0"],
            server_s=server1 - server0,
            broker_s=broker1 - broker0,
            load=os.getloadavg()[0],
            dumps=len(threads1),
            dump_s=sum(threads1[t] - threads0[t] for t in threads1 if t in threads0),
        )
        for relay, cpu0 in zip(relays, samples["relay0"], strict=True):
            cpu1 = relay.cpu()
            result.relay_s += sum(cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0)
            result.rss_mb += relay.peak_rss_mb()
        if receiver is not None:
            lost: Counter[str] = Counter()
            for eid, committed, table in commits:
                got = receiver.received.get(eid)
                if got is None or got[1] != f"mtb{tag}.{tables[table]}.order":
                    lost[tables[table]] += 1
                else:
                    result.latencies.append((got[0] - committed) * 1000)
            result.latencies.sort()
            result.delivered, result.lost = len(result.latencies), dict(lost)
        if late and result.achieved < 0.95 * rate:
            print(f"note: {label} at {rate}/s: writers fell behind {late} time(s)", flush=True)
        return result
    finally:
        for relay in relays:
            relay.stop()
        if receiver is not None:
            await receiver.stop()


async def run(args: argparse.Namespace) -> dict[int, list[Result]]:
    run_id = uuid.uuid4().hex[:8]
    tables = [f"mtb_{run_id}_{i}" for i in range(args.tables)]
    user, password = f"mtb_{run_id}", secrets.token_hex(12)
    with connect() as conn, conn.cursor() as cur:
        for db in tables:
            cur.execute(f"CREATE DATABASE {db}")
            cur.execute(OUTBOX_DDL.replace("TABLE outbox", f"TABLE {db}.outbox", 1))
        # A user of their own: its dump threads are the relays' (README's least privilege).
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'%'")
        for db in tables:
            cur.execute(f"GRANT SELECT ON {db}.* TO '{user}'@'%'")
    probe = Probe(user)
    ctx = {"args": args, "run_id": run_id, "tables": tables, "probe": probe}
    ctx |= {"user": user, "password": password, "pattern": args.pattern}
    by_rate: dict[int, list[Result]] = {}
    try:
        for rate in args.rates:
            results = by_rate.setdefault(rate, [])
            for kind, label in args.modes:
                if kind == "one" and not hasattr(RelaySettings, "multi_table"):
                    print(f"note: {label} skipped: this relay has no OUTBOX_OUTBOX_TABLES setting")
                    continue
                try:
                    results.append(await run_mode(kind, label, rate, ctx))
                except ConfigurationError as exc:
                    print(f"note: {label} skipped: the relay refused its settings: {exc}")
            report(rate, results, args)
    finally:
        probe.conn.close()
        with connect() as conn, conn.cursor() as cur:
            for db in tables:
                cur.execute(f"DROP DATABASE IF EXISTS {db}")
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
    return by_rate


def parse_modes(parser: argparse.ArgumentParser, text: str, tables: int) -> list[tuple[str, str]]:
    """``--modes`` as (kind, label): ``Nx1`` and ``1xN`` may also name the table count."""
    names = {"baseline": "baseline", f"{tables}x1": "each", "Nx1": "each"}
    names |= {f"1x{tables}": "one", "1xN": "one"}
    out = []
    for token in filter(None, (t.strip() for t in text.split(","))):
        if token not in names:
            parser.error(f"--modes: unknown {token} (baseline, Nx1, 1xN)")
        kind = names[token]
        out.append((kind, {"each": f"{tables}x1", "one": f"1x{tables}"}.get(kind, kind)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000", help="total transactions/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of writing per run")
    parser.add_argument("--tables", type=int, default=10, help="outbox tables (databases)")
    parser.add_argument("--modes", default="baseline,Nx1,1xN", help="baseline, Nx1, 1xN")
    parser.add_argument("--writers", type=int, default=0, help="writer processes (default 1/500/s)")
    parser.add_argument("--pattern", action="store_true", help="1xN: a table pattern, not a list")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the rest")
    parser.add_argument("--plot", type=Path, help="write a CPU and lag plot (PNG) here")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.seconds, args.tables = "200", 2.0, 3
    try:
        args.rates = [int(r) for r in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates: {args.rates!r} is not comma-separated whole numbers")
    if args.tables < 1 or args.seconds <= 0 or min(args.rates) < 1:
        parser.error("--tables, --seconds and --rates must be positive")
    args.modes = parse_modes(parser, args.modes, args.tables)
    print(
        f"multi tables: {args.tables} outbox tables, one-event transactions, modes "
        f"{', '.join(label for _, label in args.modes)}; relays with default settings"
    )
    by_rate = asyncio.run(run(args))
    if args.plot:
        plot(args.plot, by_rate)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
