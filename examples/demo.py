"""The demo behind ``./dev/demo``: API -> MariaDB (row + event, one transaction) -> binlog
-> relay -> Kafka -> consumer -> read model, on the local stack.

    ./dev/demo                          # run the scenario, then keep running until Ctrl-C
    ./dev/demo --once                   # run the scenario, clean up, exit (0 = read model right)
    ./dev/demo --once --restart-relay-midway
    ./dev/demo --summary-json out.json  # also write the final summary there

Each run is isolated: its own databases (``demo_<run>`` for orders + outbox,
``demo_<run>_read`` for the read model), topic (``demo_<run>.outbox.event.order``),
relay name and Redis key prefix, consumer group. They are removed at the end (not
with ``--keep``); the stack itself stays up (``./dev/stack stop`` stops it).

The last line printed is ``DEMO_SUMMARY {json}``: the read model, the one expected
from the API's answers, and counts of events, Kafka records and inbox rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pymysql
import redis.asyncio
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PY = sys.executable
PARTITIONS = 3


class DemoError(Exception):
    """Something went wrong: printed as a one-line reason, exit code 1."""


def say(text: str = "") -> None:
    print(text, flush=True)


def load_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the demo itself dies (Linux), so nothing is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A child process (relay, api-server, consumer) logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.env, self.log = name, args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, pids: list[int], **extra_env: str) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env={**self.env, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C reaches only the demo, which stops children in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        pids.append(self.proc.pid)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait; SIGKILL only if it does not stop in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("      " + line for line in text)


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:6]
        self.db = f"demo_{self.run_id}"
        self.read_db = f"demo_{self.run_id}_read"
        prefix = f"demo_{self.run_id}"
        self.topic_template = prefix + ".outbox.event.{aggregatetype}"
        self.topic = prefix + ".outbox.event.order"
        self.relay_name = f"demo-{self.run_id}"
        self.key_prefix = f"outbox:demo:{self.run_id}:"
        self.group = f"demo-{self.run_id}-customer-stats"
        self.logs = Path(tempfile.mkdtemp(prefix=f"outbox-demo-{self.run_id}-"))
        self.children: dict[str, Child] = {}
        self.pids: list[int] = []  # every child process started (for the summary)
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self.printed = 0
        self.seen: dict[str, tuple[int, int]] = {}  # event id -> (partition, offset)
        self.events = 0  # events the API committed (one per successful change)
        self.expected: dict[str, dict[str, Any]] = {}
        self.relay_up = False
        self.stopping = asyncio.Event()
        self.created_dbs = False

    # -- setup -------------------------------------------------------------------

    def start_stack(self) -> None:
        out = subprocess.run(
            [PY, str(ROOT / "dev" / "stack.py"), "start"], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise DemoError(f"the local stack did not start:\n{out.stdout}{out.stderr}")
        sys.path.insert(0, str(ROOT / "dev"))
        try:
            import stack  # the stack script: its addresses
        finally:
            sys.path.pop(0)
        env = stack.env_vars()
        self.mysql = make_url(env["OUTBOX_MYSQL_URL"])
        self.redis_url = env["OUTBOX_REDIS_URL"]
        self.kafka = env["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"]
        say(
            f"[1/5] Local stack up: MariaDB {self.mysql.host}:{self.mysql.port} (binlog on),"
            f" Redis {self.redis_url.split('//')[1]}, Kafka-compatible broker {self.kafka}"
        )

    def url(self, database: str, driver: str = "mysql+pymysql") -> str:
        return self.mysql.set(drivername=driver, database=database).render_as_string(
            hide_password=False
        )

    def migrate(self) -> None:
        migrate = load_module("demo_migrate", EXAMPLES / "migrate.py")
        self.created_dbs = True
        urls = {
            "ORDERS_DATABASE_URL": self.url(self.db),
            "STATS_DATABASE_URL": self.url(self.read_db),
        }
        migrate.migrate(urls, quiet=True)
        # Where the binlog ends now, after the migrations: the relay starts here. This is
        # "latest" taken before the relay starts, so no request can slip in between.
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            log_file, log_pos = cur.fetchone()[:2]
        self.start_position = f"{log_file}:{log_pos}"
        say(f"[2/5] Databases created and migrated with alembic (logs of everything: {self.logs})")
        say(f"        {self.db:<16} orders + outbox           (api-server writes here)")
        say(f"        {self.read_db:<16} outbox_inbox + customer_stats (consumer writes here)")

    def connect(self) -> pymysql.Connection:  # type: ignore[type-arg]
        u = self.mysql
        return pymysql.connect(
            host=u.host, port=u.port or 3306, user=u.username, password=u.password or ""
        )

    async def create_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.topic, PARTITIONS, 1)])
        finally:
            await admin.close()

    def make_children(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
        base["PYTHONUNBUFFERED"] = "1"
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.bind = ["--host", "127.0.0.1", "--port", str(self.port)]
        relay_env = {
            **base,
            "OUTBOX_MYSQL_URL": self.url(self.db),
            "OUTBOX_REDIS_URL": self.redis_url,
            "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            "OUTBOX_ENABLE_IDEMPOTENCE": "false",  # the local tansu broker has no idempotence
            "OUTBOX_START_POSITION": self.start_position,
            "OUTBOX_TOPIC_TEMPLATE": self.topic_template,
            "OUTBOX_RELAY_NAME": self.relay_name,
            "OUTBOX_KEY_PREFIX": self.key_prefix,
            "OUTBOX_CHECKPOINT_INTERVAL_MS": "200",
            "OUTBOX_HEARTBEAT_SECONDS": "1",
            "OUTBOX_LINGER_MS": "1",
        }
        api_env = {**base, "ORDERS_DATABASE_URL": self.url(self.db, "mysql+asyncmy")}
        consumer_env = {
            **base,
            "STATS_DATABASE_URL": self.url(self.read_db, "mysql+asyncmy"),
            "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            "ORDERS_TOPIC": self.topic,
            "CONSUMER_GROUP": self.group,
            # tansu: group joins take half the session timeout; keep it short.
            "CONSUMER_SESSION_TIMEOUT_MS": "1000",
            "CONSUMER_HEARTBEAT_INTERVAL_MS": "300",
        }
        self.consumer_env = consumer_env
        self.children = {
            "relay": Child(
                "relay",
                [PY, "-m", "transactional_outbox.relay"],
                relay_env,
                self.logs / "relay.log",
            ),
            "api-server": Child(
                "api-server",
                [PY, "-m", "uvicorn", "app:app", "--app-dir", "examples/api-server", *self.bind],
                api_env,
                self.logs / "api-server.log",
            ),
            "consumer": Child(
                "consumer",
                [PY, "examples/consumer/consumer.py"],
                consumer_env,
                self.logs / "consumer.log",
            ),
        }

    async def start_children(self) -> None:
        for child in self.children.values():
            child.start(self.pids)
        self.relay_up = True
        async with httpx.AsyncClient(timeout=2) as client:

            async def api_ready() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get(self.api + "/healthz")).status_code == 200
                return False

            await self.wait_until(api_ready, "the api-server to answer", 20)
        say(
            f"[3/5] Started: relay (from binlog {self.start_position}),"
            f" api-server {self.api} (docs: {self.api}/docs), consumer (group {self.group})"
        )

    # -- watching Kafka ------------------------------------------------------------

    async def watch_kafka(self) -> None:
        """Read the demo topic from the start, without a consumer group."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        self.reader = consumer
        self.partitions = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        consumer.assign(self.partitions)
        await consumer.seek_to_beginning(*self.partitions)
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for tp in sorted(batch):
                self.records.extend(batch[tp])

    def print_new_records(self) -> None:
        while self.printed < len(self.records):
            r = self.records[self.printed]
            self.printed += 1
            headers = {k: v.decode(errors="replace") for k, v in r.headers}
            where = f"partition {r.partition}, offset {r.offset}"
            key = r.key.decode() if r.key else None
            first = self.seen.setdefault(headers.get("id", "?"), (r.partition, r.offset))
            if first != (r.partition, r.offset):
                say(
                    f"     <- Kafka {where}  key={key}  {headers.get('type')}: DUPLICATE"
                    f" (same id as offset {first[1]}) - the consumer's inbox skips it"
                )
                continue
            say(f"     <- Kafka {r.topic}  {where}  key={key}")
            say(f"        value:   {r.value.decode(errors='replace') if r.value else None}")
            say("        headers: " + ", ".join(f"{k}={v}" for k, v in headers.items()))

    # -- the scenario --------------------------------------------------------------

    async def request(
        self, client: httpx.AsyncClient, method: str, path: str, body: Any = None
    ) -> httpx.Response:
        shown = f" {json.dumps(body)}" if body is not None else ""
        response = await client.request(method, self.api + path, json=body)
        try:
            answer = response.json()
        except ValueError:
            answer = response.text
        if isinstance(answer, dict) and "detail" in answer:
            answer = _short_detail(answer["detail"])
        elif isinstance(answer, dict):
            answer = {k: answer[k] for k in ("id", "customer_id", "amount", "status")}
        say(f"  -> {method} {path}{shown}")
        say(f"     <- HTTP {response.status_code} {json.dumps(answer)}")
        if response.is_success and method == "POST":
            self.events += 1
            self.account(path, response.json())
            if self.relay_up:
                await self.wait_for_events()
            else:
                say("     (the relay is down: the event waits in the binlog)")
        return response

    def account(self, path: str, order: dict[str, Any]) -> None:
        """What the read model must become, from the API's answers."""
        stats = self.expected.setdefault(
            order["customer_id"], {"orders": 0, "total_amount": Decimal(0), "cancelled": 0}
        )
        if path == "/orders":
            stats["orders"] += 1
            stats["total_amount"] += Decimal(order["amount"])
        elif path.endswith("/cancel"):
            stats["cancelled"] += 1
            stats["total_amount"] -= Decimal(order["amount"])

    async def wait_for_events(self, records: int | None = None) -> None:
        def arrived() -> bool:
            ids = {dict(r.headers).get("id") for r in self.records}
            return len(ids) >= self.events and len(self.records) >= (records or 0)

        await self.wait_until(arrived, "the event(s) on Kafka", 20)
        self.print_new_records()

    async def scenario(self) -> None:
        say("[4/5] Requests to the api-server; each change commits its row and its event")
        say("      together, the relay publishes the event, keyed by order id:")
        async with httpx.AsyncClient(timeout=10) as c:
            a1 = (await self.request(c, "POST", "/orders", _order("alice", "42.50"))).json()
            await self.request(c, "POST", "/orders", _order("bob", "10.00"))
            a2 = (await self.request(c, "POST", "/orders", _order("alice", "7.25"))).json()
            await self.request(c, "POST", f"/orders/{a1['id']}/status", {"status": "paid"})
            if self.args.restart_relay_midway:
                await self.stop_relay()
            await self.request(c, "POST", "/orders", _order("bob", "99.99"))
            if self.args.restart_relay_midway:
                await self.restart_relay()
            await self.request(c, "POST", f"/orders/{a2['id']}/cancel")
            await self.request(c, "POST", f"/orders/{a1['id']}/status", {"status": "shipped"})
            await self.request(c, "GET", f"/orders/{a2['id']}")
            say("  Two bad requests: 4xx, nothing written, no event:")
            await self.request(c, "POST", f"/orders/{a2['id']}/status", {"status": "paid"})
            await self.request(c, "POST", "/orders", {"customer_id": "carol", "amount": "-5"})

    async def stop_relay(self) -> None:
        relay = self.children["relay"]
        code = relay.stop()
        self.relay_up = False
        say(f"  == relay stopped with SIGTERM (exit code {code}; it saved its checkpoint)")
        if code != 0:
            raise DemoError(f"the relay exited with {code}:\n{relay.tail()}")

    async def restart_relay(self) -> None:
        before = len(self.records)
        # Ignore the checkpoint and start again from the demo's first position, as if it
        # had been lost in a crash: every event so far is published a second time (same
        # id). The consumer must not count any of them twice.
        self.children["relay"].start(self.pids, OUTBOX_IGNORE_CHECKPOINT="true")
        self.relay_up = True
        say("  == relay started again, told to ignore its checkpoint: it re-reads the binlog")
        say("     from the demo's start, so Kafka gets every earlier event twice")
        await self.wait_for_events(records=before + self.events)

    async def wait_for_consumer(self) -> dict[str, Any]:
        """Until the consumer group has committed every record and the read model is right."""
        group = AIOKafkaConsumer(
            bootstrap_servers=self.kafka, group_id=self.group, enable_auto_commit=False
        )
        await group.start()
        expected = _jsonable(self.expected)
        model: dict[str, Any] = {}
        try:
            ends: dict[TopicPartition, int] = {}

            async def caught_up() -> bool:
                nonlocal model, ends
                ends = await self.reader.end_offsets(self.partitions)
                for tp in self.partitions:
                    if ((await group.committed(tp)) or 0) < ends[tp]:
                        return False
                model = await asyncio.to_thread(self.read_model)
                return model == expected

            try:
                await self.wait_until(caught_up, "the consumer to process every record", 20)
            except DemoError:
                if model and model != expected:
                    raise DemoError(
                        f"read model {json.dumps(model)} != expected {json.dumps(expected)}"
                    ) from None
                raise
        finally:
            await group.stop()
        return model

    def read_model(self) -> dict[str, Any]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT customer_id, orders, total_amount, cancelled"
                f" FROM `{self.read_db}`.customer_stats ORDER BY customer_id"
            )
            rows = cur.fetchall()
        return {c: {"orders": o, "total_amount": str(t), "cancelled": x} for c, o, t, x in rows}

    def inbox_rows(self) -> int:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{self.read_db}`.outbox_inbox")
            return int(cur.fetchone()[0])

    def consumer_log_counts(self) -> tuple[int, int]:
        text = self.children["consumer"].log.read_text(errors="replace")
        return text.count(": applied "), text.count(": duplicate, skipped ")

    async def report(self) -> dict[str, Any]:
        model = await self.wait_for_consumer()
        show = await asyncio.to_thread(
            subprocess.run,
            [PY, "examples/consumer/consumer.py", "--show"],
            cwd=ROOT,
            env=self.consumer_env,
            capture_output=True,
            text=True,
        )
        applied, skipped = self.consumer_log_counts()
        say("[5/5] Read model built by the consumer (examples/consumer/consumer.py --show):")
        for line in show.stdout.splitlines():
            say("        " + line)
        distinct = len({dict(r.headers).get("id") for r in self.records})
        say(
            f"      {self.events} events, {len(self.records)} Kafka records"
            f" ({len(self.records) - distinct} duplicates); consumer: {applied} applied,"
            f" {skipped} duplicates skipped; {self.inbox_rows()} inbox rows."
            " It matches what the API answered."
        )
        return {
            "run": self.run_id,
            "read_model": model,
            "expected_read_model": _jsonable(self.expected),
            "events": self.events,
            "distinct_events_on_kafka": distinct,
            "kafka_records": len(self.records),
            "inbox_rows": self.inbox_rows(),
            "consumer_applied": applied,
            "consumer_skipped": skipped,
            "relay_restarted": bool(self.args.restart_relay_midway),
            "child_pids": self.pids,
        }

    async def interactive(self) -> None:
        say()
        say("Still running. Try it yourself; new events show up here. Ctrl-C stops the demo.")
        say(
            f"  curl -s -X POST {self.api}/orders -H 'content-type: application/json'"
            """ -d '{"customer_id": "carol", "amount": "5.00"}'"""
        )
        say(
            f"  curl -s -X POST {self.api}/orders/1/status -H 'content-type: application/json'"
            """ -d '{"status": "shipped"}'"""
        )
        say(f"  STATS_DATABASE_URL={self.url(self.read_db)} \\")
        say("    .venv/bin/python examples/consumer/consumer.py --show")
        last = await asyncio.to_thread(self.read_model)
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.5)
            self.check_children()
            self.print_new_records()
            model = await asyncio.to_thread(self.read_model)
            if model != last:
                last = model
                say(f"  read model now: {json.dumps(model)}")

    # -- helpers ---------------------------------------------------------------------

    def check_children(self) -> None:
        for name, child in self.children.items():
            if name == "relay" and not self.relay_up:
                continue
            if child.proc is not None and not child.running:
                raise DemoError(
                    f"the {name} exited with code {child.proc.returncode}; its log:\n"
                    + child.tail()
                )

    async def wait_until(
        self, check: Callable[[], bool | Awaitable[bool]], what: str, within: float
    ) -> None:
        deadline = time.monotonic() + within
        while True:
            self.check_children()
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if self.stopping.is_set():
                raise DemoError("interrupted")
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {within:.0f}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def cleanup(self) -> None:
        codes = {}
        for name in ("api-server", "relay", "consumer"):  # stop writing first
            child = self.children.get(name)
            if child is not None and child.proc is not None:
                codes[name] = await asyncio.to_thread(child.stop)
        if codes:
            # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is a clean stop too.
            if all(c in (0, -signal.SIGTERM) for c in codes.values()):
                say(f"Stopped {', '.join(codes)} with SIGTERM: each shut down cleanly.")
            else:
                say("Stopped with SIGTERM: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))
        if self.args.keep:
            say(f"Kept databases {self.db}, {self.read_db} and topic {self.topic} (--keep).")
            return
        with contextlib.suppress(Exception):
            admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka)
            await admin.start()
            try:
                await asyncio.wait_for(admin.delete_topics([self.topic]), 5)
            finally:
                await admin.close()
        with contextlib.suppress(Exception):
            client = redis.asyncio.Redis.from_url(self.redis_url)
            try:
                keys = [k async for k in client.scan_iter(match=self.key_prefix + "*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()
        if self.created_dbs:
            with self.connect() as conn, conn.cursor() as cur:
                for db in (self.db, self.read_db):
                    cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        say("Removed the demo's databases, topic and Redis keys. The stack is still up")
        say("(./dev/stack stop stops it).")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        say("transactional-outbox demo: an order API writes each change and its event in one")
        say("transaction; a relay tails MariaDB's binlog and publishes the events to Kafka;")
        say("a consumer keeps a per-customer read model, processing each event exactly once.")
        say()
        watcher: asyncio.Task[None] | None = None
        code = 0
        summary: dict[str, Any] | None = None
        try:
            await asyncio.to_thread(self.start_stack)
            await asyncio.to_thread(self.migrate)
            await self.create_topic()
            self.make_children()
            await self.start_children()
            watcher = asyncio.create_task(self.watch_kafka())
            await self.scenario()
            summary = await self.report()
            if not self.args.once:
                await self.interactive()
        except DemoError as exc:
            if str(exc) != "interrupted":
                say(f"DEMO FAILED: {exc}")
                say(f"(logs in {self.logs})")
                code = 1
            else:
                code = 130
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
                with contextlib.suppress(Exception):
                    await self.reader.stop()
            say()
            await self.cleanup()
        if summary is not None:
            if self.args.summary_json:
                text = json.dumps(summary, indent=2)
                await asyncio.to_thread(Path(self.args.summary_json).write_text, text)
            say("DEMO_SUMMARY " + json.dumps(summary, sort_keys=True))
        return code


def _order(customer: str, amount: str) -> dict[str, str]:
    return {"customer_id": customer, "amount": amount}


def _short_detail(detail: Any) -> str:
    """FastAPI's error detail in one line (a validation error is a list)."""
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', ())[1:])}: {d.get('msg')}" for d in detail
        )
    return str(detail)


def _jsonable(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        c: {k: (f"{v:.2f}" if isinstance(v, Decimal) else v) for k, v in s.items()}
        for c, s in sorted(stats.items())
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="run the scenario once and exit")
    parser.add_argument(
        "--restart-relay-midway",
        action="store_true",
        help="stop the relay (SIGTERM) halfway, then restart it replaying from the start",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases and topic")
    parser.add_argument("--summary-json", metavar="PATH", help="write the summary JSON here")
    return asyncio.run(Demo(parser.parse_args()).run())


if __name__ == "__main__":
    sys.exit(main())
