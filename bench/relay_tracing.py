"""What tracing costs: the relay's publisher with ``trace_publish`` off and on, and a consumer span.

    .venv/bin/python bench/relay_tracing.py [--events 50000] [--runs 3] [--quick]

Against the local stack's broker (./dev/stack start). The relay's hot path after the
reader is its publisher (``KafkaPublisher.publish``: partitioning, per-partition
batches, one callback per batch) on the relay's event loop, where the PRODUCER spans
are built (in each batch's done callback). Each run publishes ``--events`` records of
the relay's own shape (the six §2 headers plus a ``traceparent``, 200-byte payloads,
1,000 keys, 4 partitions) in chunks of 500 as the session does, until Kafka has
acknowledged every one, and reports events/s and the process's CPU µs per event:

  off      ``trace_publish`` off (the default)
  api      on, with the OpenTelemetry API and no SDK (its no-op spans)
  sdk      on, with the SDK's ``TracerProvider`` and a ``BatchSpanProcessor`` to an
           exporter that drops the spans (what a configured service pays, minus I/O)

Modes alternate within each run (the SDK is installed once, so its runs come after
the API's: off/api pairs, then off/sdk pairs). Medians of ``--runs``.

Then the consumer side, CPU µs per handled event: with the SDK one CONSUMER span
(``ConsumerTracer.span`` around an empty handler); with the API alone no span is made,
and what is left is the check (``consumer_tracer()``, which the decorator makes per call).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from _common import BOOTSTRAP

from transactional_outbox.consumer import ReceivedEvent
from transactional_outbox.event import OutboxEvent
from transactional_outbox.relay.publisher import KafkaPublisher
from transactional_outbox.relay.routing import TopicRouter, build_record

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CHUNK = 500


def records(topic_template: str, count: int) -> list[Any]:
    router = TopicRouter(template=topic_template)
    out = []
    for n in range(count):
        event = OutboxEvent.create(
            aggregate_type="order",
            aggregate_id=n % 1000,
            event_type="Placed",
            payload=b"x" * 200,
            headers={"traceparent": TRACEPARENT},
        )
        out.append(build_record(event, router))
    return out


async def ensure_topic(topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()


async def one_run(items: list[Any], trace: bool) -> tuple[float, float]:
    """(events/s, CPU µs per event) publishing ``items`` until all are acknowledged."""
    publisher = KafkaPublisher(
        {
            "bootstrap_servers": BOOTSTRAP,
            "enable_idempotence": False,
            "linger_ms": 5,
            "max_batch_size": 262_144,
            "acks": "all",
        },
        trace=trace,
    )
    await publisher.start()
    done = 0
    finished = asyncio.get_running_loop().create_future()
    total = len(items)

    def on_done(runs: Any, recs: list[Any], error: BaseException | None) -> None:
        nonlocal done
        assert error is None, error
        done += len(recs)
        if done == total and not finished.done():
            finished.set_result(None)

    async def on_rejected(*args: Any) -> None:
        raise AssertionError(args)

    try:
        # Warm the topic's metadata outside the measured time.
        await publisher.publish([(items[0], 0)], lambda *a: None, on_rejected)
        await publisher.flush()
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, total, CHUNK):
            chunk = [(r, i) for i, r in enumerate(items[start : start + CHUNK], start)]
            await publisher.publish(chunk, on_done, on_rejected)
        await asyncio.wait_for(finished, 120)  # every record acknowledged, or fail
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await publisher.stop()
    return total / wall, cpu / total * 1e6


class _Drop:
    """A span exporter that drops everything (no I/O in the measurement)."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def install_sdk() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop()))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)


def consumer_span_cost(count: int) -> float:
    """CPU µs per event of the consumer's tracing (without an SDK: the check alone)."""
    from transactional_outbox.consumer.tracing import consumer_tracer

    tracer = consumer_tracer()
    event = ReceivedEvent.from_event(
        OutboxEvent.create(
            aggregate_type="order",
            aggregate_id=1,
            event_type="Placed",
            payload={},
            headers={"traceparent": TRACEPARENT},
        ),
        topic="outbox.event.order",
        partition=0,
        offset=1,
    )
    cpu = time.process_time()
    if tracer is None:  # what the decorator does per call without an SDK
        for _ in range(count):
            consumer_tracer()
    else:
        for _ in range(count):
            with tracer.span(event, group="g") as state:
                state.outcome("handled")
    return (time.process_time() - cpu) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (medians)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.events, args.runs = 2_000, 1
    topic = f"bench.tracing.{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topic(topic))
    items = records(topic, args.events)
    results: dict[str, list[tuple[float, float]]] = {"off": [], "api": [], "sdk": []}
    spans = 2_000 if args.quick else 50_000
    consumer: dict[str, float] = {}
    for phase in ("api", "sdk"):
        if phase == "sdk":
            install_sdk()
        consumer[phase] = consumer_span_cost(spans)
        for _ in range(args.runs):
            results["off"].append(asyncio.run(one_run(items, False)))
            results[phase].append(asyncio.run(one_run(items, True)))
    print(f"relay publisher, {args.events} events per run, {args.runs} runs per mode (median)")
    print(f"{'mode':<6}{'events/s':>12}{'CPU µs/event':>15}{'vs off':>9}")
    off_cpu = statistics.median(c for _, c in results["off"])
    for mode, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{mode:<6}{rate:>12,.0f}{cpu:>15.1f}{(cpu / off_cpu - 1) * 100:>+8.0f}%")
    print(
        f"consumer: CPU µs per event ({spans} events): API only (no span) "
        f"{consumer['api']:.2f}, SDK (a CONSUMER span) {consumer['sdk']:.1f}"
    )
    print("lost: 0")  # every run waited for all its records to be acknowledged


if __name__ == "__main__":
    main()
