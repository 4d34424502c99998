"""The demo's run, step by step: resources, children, the scenario, the report, cleanup."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from outbox_dev import stack

from .console import DemoError, say
from .expected import ExpectedReadModel
from .kafka_view import KafkaView
from .processes import PY, DemoProcesses
from .resources import DemoResources


class Demo:
    """One run of the demo with the command line's options."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.res = DemoResources(args.database, args.outbox_mode)
        self.logs = Path(tempfile.mkdtemp(prefix=f"outbox-demo-{self.res.run_id}-"))
        self.procs: DemoProcesses | None = None
        self.view: KafkaView | None = None
        self.expected = ExpectedReadModel()
        self.relay_up = False
        self.stopping = asyncio.Event()

    # -- setup -------------------------------------------------------------------

    async def start_children(self) -> None:
        self.procs = DemoProcesses(self.res, self.logs)
        self.api = self.procs.api
        self.procs.start()
        self.relay_up = True
        async with httpx.AsyncClient(timeout=2) as client:

            async def api_ready() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get(self.api + "/healthz")).status_code == 200
                return False

            await self.wait_until(api_ready, "the api-server to answer", 20)
        say(
            f"[3/5] Started: relay (from {self.res.start_position}),"
            f" api-server {self.api} (docs: {self.api}/docs), consumer (group {self.res.group})"
        )

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
            self.expected.account(path, response.json())
            if self.relay_up:
                await self.wait_for_events()
            else:
                where = "binlog" if self.res.kind == "mysql" else "replication slot"
                say(f"     (the relay is down: the event waits in the {where})")
        return response

    async def wait_for_events(self, records: int | None = None) -> None:
        view = self.kafka_view()

        def arrived() -> bool:
            enough = len(view.records) >= (records or 0)
            return view.distinct_events() >= self.expected.events and enough

        await self.wait_until(arrived, "the event(s) on Kafka", 20)
        view.print_new_records()

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
        relay = self.processes().children["relay"]
        code = relay.stop()
        self.relay_up = False
        say(f"  == relay stopped with SIGTERM (exit code {code}; it saved its checkpoint)")
        if code != 0:
            raise DemoError(f"the relay exited with {code}:\n{relay.tail()}")

    async def restart_relay(self) -> None:
        before = len(self.kafka_view().records)
        procs = self.processes()
        # Ignore the checkpoint and start again from the demo's first position, as if it
        # had been lost in a crash: every event so far is published a second time (same
        # id). The consumer must not count any of them twice.
        procs.children["relay"].start(procs.pids, OUTBOX_IGNORE_CHECKPOINT="true")
        self.relay_up = True
        if self.res.kind == "mysql":
            say("  == relay started again, told to ignore its checkpoint: it re-reads the binlog")
            say("     from the demo's start, so Kafka gets every earlier event twice")
            await self.wait_for_events(records=before + self.expected.events)
            return
        # A PostgreSQL slot only moves forward: PostgreSQL resumes the relay at the slot's
        # confirmed position whatever the checkpoint says, so only events it had not
        # confirmed yet are published again.
        say("  == relay started again, told to ignore its checkpoint: PostgreSQL still resumes")
        say("     it at its slot's confirmed position (a slot never moves back), so only")
        say("     events it had not confirmed yet are published again")
        await self.wait_for_events()

    # -- the report ------------------------------------------------------------------

    async def wait_for_consumer(self) -> dict[str, Any]:
        """Until the consumer group has committed every record and the read model is right."""
        view = self.kafka_view()
        group = AIOKafkaConsumer(
            bootstrap_servers=self.res.kafka, group_id=self.res.group, enable_auto_commit=False
        )
        await group.start()
        expected = self.expected.as_json()
        model: dict[str, Any] = {}
        try:

            async def caught_up() -> bool:
                nonlocal model
                ends = await view.end_offsets()
                for tp in view.partitions:
                    if ((await group.committed(tp)) or 0) < ends[tp]:
                        return False
                model = await asyncio.to_thread(self.res.read_model)
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

    def consumer_log_counts(self) -> tuple[int, int]:
        text = self.processes().children["consumer"].log.read_text(errors="replace")
        return text.count(": applied "), text.count(": duplicate, skipped ")

    async def report(self) -> dict[str, Any]:
        model = await self.wait_for_consumer()
        show = await asyncio.to_thread(
            subprocess.run,
            [PY, "examples/consumer/consumer.py", "--show"],
            cwd=stack.ROOT,
            env=self.processes().consumer_env,
            capture_output=True,
            text=True,
        )
        applied, skipped = self.consumer_log_counts()
        say("[5/5] Read model built by the consumer (examples/consumer/consumer.py --show):")
        for line in show.stdout.splitlines():
            say("        " + line)
        records = len(self.kafka_view().records)
        distinct = self.kafka_view().distinct_events()
        say(
            f"      {self.expected.events} events, {records} Kafka records"
            f" ({records - distinct} duplicates); consumer: {applied} applied,"
            f" {skipped} duplicates skipped; {self.res.inbox_rows()} inbox rows."
            " It matches what the API answered."
        )
        return {
            "run": self.res.run_id,
            "read_model": model,
            "expected_read_model": self.expected.as_json(),
            "events": self.expected.events,
            "distinct_events_on_kafka": distinct,
            "kafka_records": records,
            "inbox_rows": self.res.inbox_rows(),
            "consumer_applied": applied,
            "consumer_skipped": skipped,
            "relay_restarted": bool(self.args.restart_relay_midway),
            "database": self.res.kind,
            "outbox_mode": self.res.outbox_mode,
            "child_pids": self.processes().pids,
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
        say(f"  STATS_DATABASE_URL={self.res.url(self.res.read_db)} \\")
        say("    .venv/bin/python examples/consumer/consumer.py --show")
        last = await asyncio.to_thread(self.res.read_model)
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.5)
            self.processes().check(self.relay_up)
            self.kafka_view().print_new_records()
            model = await asyncio.to_thread(self.res.read_model)
            if model != last:
                last = model
                say(f"  read model now: {json.dumps(model)}")

    # -- helpers ---------------------------------------------------------------------

    def processes(self) -> DemoProcesses:
        assert self.procs is not None, "children not started yet"
        return self.procs

    def kafka_view(self) -> KafkaView:
        assert self.view is not None, "not watching Kafka yet"
        return self.view

    async def wait_until(
        self, check: Callable[[], bool | Awaitable[bool]], what: str, within: float
    ) -> None:
        deadline = time.monotonic() + within
        while True:
            if self.procs is not None:
                self.procs.check(self.relay_up)
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
        codes = await asyncio.to_thread(self.procs.stop) if self.procs is not None else {}
        if codes:
            # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is a clean stop too.
            if all(c in (0, -signal.SIGTERM) for c in codes.values()):
                say(f"Stopped {', '.join(codes)} with SIGTERM: each shut down cleanly.")
            else:
                say("Stopped with SIGTERM: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))
        if self.args.keep:
            res = self.res
            slot = f", replication slot {res.slot}" if res.kind == "postgresql" else ""
            say(
                f"Kept databases {res.db}, {res.read_db}{slot}, topic {res.topic} and Redis keys "
                f"{res.key_prefix}* (--keep)."
            )
            if slot:
                say(f"(Drop the slot when done: SELECT pg_drop_replication_slot('{res.slot}').)")
            return
        await self.res.remove()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        reads = {"mysql": "tails MariaDB's binlog", "postgresql": "reads PostgreSQL's WAL"}
        say("transactional-outbox demo: an order API writes each change and its event in one")
        say(f"transaction; a relay {reads[self.res.kind]} and publishes the events to Kafka;")
        say("a consumer keeps a per-customer read model, processing each event exactly once.")
        if self.res.outbox_mode == "message":
            say("Outbox mode 'message': each event is a logical decoding message, no table row.")
        say()
        watcher: asyncio.Task[None] | None = None
        code = 0
        summary: dict[str, Any] | None = None
        try:
            await asyncio.to_thread(self.res.start_stack)
            await asyncio.to_thread(self.res.migrate, self.logs)
            await self.res.create_topic()
            await self.start_children()
            self.view = KafkaView(self.res.kafka, self.res.topic)
            watcher = asyncio.create_task(self.view.watch())
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
                    await self.kafka_view().stop()
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
