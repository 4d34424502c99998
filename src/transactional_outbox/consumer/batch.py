"""One fetched batch through the runner: dedup in one round trip, then per-key lanes.

1. Decode every record; group them into *lanes*, one per (partition, key):
   records of one key run in order, lanes run concurrently (``max_concurrency``).
2. Plan every record with one store call for the whole batch (issue 16: two
   Redis round trips per record capped a partition at ~300 records/s): claim
   stores ``claim_many`` (claimed → run, done → skip, busy → the per-record way,
   which waits for the other worker); inbox stores ``done_ids``. A second copy
   of an id in the same batch is skipped: it shares the first copy's outcome.
3. Run: a claimed record calls the undecorated handler; its claim is completed
   with others in one ``complete_many`` (group commit: whatever finished while
   the previous call was in flight). A record that fails releases its claim and
   continues in :class:`Attempts` (retries, dead letter) through the decorated
   handler, one record at a time, like outside the batch.
4. A record counts as done in its partition's :class:`OffsetWatermark` once it
   is handled *and* marked done in the store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from ..exceptions import InvalidRecordError
from .attempts import Attempts
from .completion import Completer
from .decorator import AsyncIdempotentHandler, IdempotentHandler, is_async_callable
from .received import ReceivedEvent
from .store import AsyncDedupStore, AsyncInboxStore, Claim, ClaimStatus, DedupStore
from .tracing import HANDLED, NO_SPAN, EventSpan, consumer_tracer
from .watermark import OffsetWatermark

__all__ = ["BatchHandler"]

logger = logging.getLogger("transactional_outbox.consumer")

_RUN, _SKIP, _SLOW, _FAILED, _HANDLED = range(5)  # _HANDLED: in an inbox batch


@dataclass(slots=True, eq=False)
class _Item:
    tp: TopicPartition
    record: ConsumerRecord[Any, Any]
    mark: OffsetWatermark
    lane: tuple[TopicPartition, Any]
    event: ReceivedEvent | None
    error: InvalidRecordError | None
    plan: int = _RUN
    claim: Claim | None = None
    failure: Exception | None = None
    started: bool = False
    span: EventSpan | None = None


class _Deferred(Exception):
    """An earlier record of the same key failed in this batch transaction: run after it."""


class BatchHandler:
    """Handles fetched batches for a :class:`ConsumerRunner` (see the module docstring)."""

    def __init__(
        self,
        handler: Callable[..., Any],
        attempts: Attempts,
        *,
        max_concurrency: int,
        stopping: asyncio.Event,
        revoking: set[TopicPartition],
    ) -> None:
        self._attempts = attempts
        self._max_concurrency = max_concurrency
        self._stopping = stopping
        self._revoking = revoking
        self._claims: AsyncDedupStore | DedupStore | None = None
        self._inbox: AsyncInboxStore | None = None
        self._name: str | None = None
        self._fn: Callable[..., Any] = handler
        self._per_record = False  # every record through Attempts (sync inbox stores)
        self._sync_fn = not is_async_callable(handler)
        if isinstance(handler, AsyncIdempotentHandler | IdempotentHandler):
            # Batches need the store's batch operations and the bare handler;
            # a sync inbox store keeps to the per-record way.
            self._name = handler.consumer_name
            self._sync_fn = isinstance(handler, IdempotentHandler)
            if isinstance(handler.store, AsyncInboxStore) and not self._sync_fn:
                self._inbox = handler.store
                self._fn = handler.fn
            elif not handler.inbox:
                self._claims = handler.store  # type: ignore[assignment]
                self._fn = handler.fn
            else:
                self._per_record = True
        self._completer: Completer[_Item] = Completer(
            self._complete_many,
            self.mark_done,
            attempts=attempts.settings.max_attempts,
            backoff=attempts.backoff,
            stopping=attempts.stopping,
        )
        # Batches overlap (the runner fetches and plans the next one while this
        # one runs): a lane waits for the same key's lane of earlier batches.
        self._tails: dict[Any, asyncio.Future[None]] = {}
        self._in_flight: set[Any] = set()  # ids led by a batch being handled
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tracer, self._group = consumer_tracer(), attempts.settings.group_id  # no otel: None

    async def handle(
        self,
        batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]],
        marks: Mapping[TopicPartition, OffsetWatermark],
    ) -> None:
        """Handle ``batch``; each record handled is marked done in ``marks``.

        Several calls may run at once, for batches fetched one after another:
        records of one key still run in fetch order.
        """
        items = _decode(batch, marks)
        lanes: dict[Any, list[_Item]] = {}
        for item in items:
            lanes.setdefault(item.lane, []).append(item)
        # Before any await, so that a later batch's lanes queue behind these.
        loop = asyncio.get_running_loop()
        waits = {lane: self._tails.get(lane) for lane in lanes}
        mine = {lane: loop.create_future() for lane in lanes}
        self._tails.update(mine)
        leaders = self._leaders(items)
        try:
            await self._plan(leaders)
            if self._inbox is not None and self._inbox.batch_transactions:
                # One transaction runs many keys: it waits for all their earlier lanes.
                for wait in waits.values():
                    if wait is not None:
                        await wait
                await self._inbox_batch(items)
            await self._run_lanes(lanes, waits, mine)
        finally:
            for lane, future in mine.items():
                if not future.done():
                    future.set_result(None)
                if self._tails.get(lane) is future:
                    del self._tails[lane]
            try:
                await self._completer.drain()
            finally:
                for event_id in leaders:
                    self._in_flight.discard(event_id)
                await self._release_unused(items)

    # -- planning -------------------------------------------------------------

    def _leaders(self, items: list[_Item]) -> dict[Any, _Item]:
        """The first copy of each id not already in flight in an earlier batch."""
        leaders: dict[Any, _Item] = {}
        if self._per_record:
            for item in items:
                item.plan = _SLOW
            return leaders
        if self._claims is None and self._inbox is None:
            return leaders  # no deduplication asked for: every record runs
        in_flight = self._in_flight
        for item in items:
            if item.event is None:
                continue
            if item.event.id in leaders or item.event.id in in_flight:
                # Another copy, in this batch or one still running: that copy's
                # outcome decides (it is claimed by this runner; asking the store
                # would find our own claim busy and poll until it is done).
                item.plan = _SKIP
            else:
                leaders[item.event.id] = item
        in_flight.update(leaders)
        return leaders

    async def _plan(self, leaders: dict[Any, _Item]) -> None:
        if not leaders:
            return
        ids = list(leaders)
        try:
            if self._claims is not None:
                results = await self._store_call(self._claims.claim_many, ids, self._name)
                for item, result in zip(leaders.values(), results, strict=True):
                    if result.status is ClaimStatus.CLAIMED:
                        item.claim = result.claim
                    else:
                        item.plan = _SKIP if result.status is ClaimStatus.DONE else _SLOW
            elif self._inbox is not None:
                done = await self._inbox.done_ids(ids, self._name)
                for event_id in done:
                    leaders[event_id].plan = _SKIP
        except Exception as exc:
            # The store is unreachable: each record goes the per-record way (it waits).
            logger.warning("batch deduplication failed, going record by record: %r", exc)
            for item in leaders.values():
                item.plan = _SLOW

    async def _inbox_batch(self, items: list[_Item]) -> None:
        assert self._inbox is not None
        run = [i for i in items if i.plan == _RUN and i.event is not None]
        if not run:
            return
        failed_lanes: set[Any] = set()
        tracer, group, name = self._tracer, self._group, self._name

        def call_for(item: _Item) -> Callable[[Any], Awaitable[object]]:
            async def call(session: Any) -> None:
                if item.lane in failed_lanes:
                    raise _Deferred  # keeps the key's order: it runs after the failed one
                try:
                    if tracer is None or item.event is None:
                        await self._fn(item.event, session)
                    else:  # ended once the transaction's outcome is known (_after_inbox_chunk)
                        item.span = tracer.start(item.event, group=group, consumer_name=name)
                        with tracer.use(item.span):
                            await self._fn(item.event, session)
                except BaseException:
                    failed_lanes.add(item.lane)
                    raise

            return call

        # Lanes are dealt to a few transactions that run at once (each on its own
        # connection): a transaction runs its handlers one after another.
        chunks: list[list[_Item]] = [[] for _ in range(self._inbox.batch_concurrency)]
        lane_chunk: dict[Any, list[_Item]] = {}
        for item in run:
            chunk = lane_chunk.get(item.lane)
            if chunk is None:
                chunk = lane_chunk[item.lane] = chunks[len(lane_chunk) % len(chunks)]
            chunk.append(item)
        chunks = [c for c in chunks if c]
        answers = await asyncio.gather(*(self._inbox_chunk(c, call_for) for c in chunks))
        for chunk, results in zip(chunks, answers, strict=True):
            self._after_inbox_chunk(chunk, results)

    async def _inbox_chunk(
        self, chunk: list[_Item], call_for: Callable[[_Item], Callable[[Any], Awaitable[object]]]
    ) -> list[BaseException | None]:
        assert self._inbox is not None
        calls = [(i.event.id, call_for(i)) for i in chunk if i.event is not None]
        try:
            if self._tracer is None:
                return await self._inbox.run_batch(self._name, calls)
            with self._tracer.batch([i.event for i in chunk if i.event], group=self._group):
                return await self._inbox.run_batch(self._name, calls)
        except Exception as exc:
            logger.warning("batch transaction failed, going record by record: %r", exc)
            return [_Deferred()] * len(chunk)

    def _after_inbox_chunk(self, chunk: list[_Item], results: list[BaseException | None]) -> None:
        for item, result in zip(chunk, results, strict=True):
            if result is None:
                item.plan = _HANDLED
            elif isinstance(result, _Deferred) or not isinstance(result, Exception):
                item.plan = _SLOW
            else:
                item.plan, item.failure = _FAILED, result
            if item.span is not None:  # its call ran: the transaction's outcome is known
                deferred = isinstance(result, _Deferred)
                item.span.end(HANDLED if result is None else None, None if deferred else result)

    # -- running ----------------------------------------------------------------

    async def _run_lanes(
        self,
        lanes: dict[Any, list[_Item]],
        waits: dict[Any, asyncio.Future[None] | None],
        mine: dict[Any, asyncio.Future[None]],
    ) -> None:
        # Lanes free to start go first; those behind an earlier batch's lane last.
        order = sorted(lanes, key=lambda lane: waits[lane] is not None)
        queue = deque((lanes[lane], waits[lane], mine[lane]) for lane in order)
        workers = min(self._max_concurrency, len(queue))
        if workers == 1:
            await self._worker(queue)
            return
        results = await asyncio.gather(
            *(self._worker(queue) for _ in range(workers)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _worker(
        self, queue: deque[tuple[list[_Item], asyncio.Future[None] | None, asyncio.Future[None]]]
    ) -> None:
        try:
            while queue:
                items, wait, done = queue.popleft()
                if wait is not None:
                    await wait
                async with self._slots:
                    for item in items:
                        if self._stopping.is_set() or item.tp in self._revoking:
                            break
                        if not await self._one(item):
                            break
                done.set_result(None)
        except BaseException:
            self._stopping.set()  # other lanes stop after their current record
            raise

    async def _one(self, item: _Item) -> bool:
        if self._tracer is None or item.event is None or item.plan == _HANDLED:
            return await self._one_in(item, NO_SPAN)  # traced in _inbox_batch
        with self._tracer.span(item.event, group=self._group, consumer_name=self._name) as state:
            return await self._one_in(item, state)

    async def _one_in(self, item: _Item, state: EventSpan) -> bool:
        record, event = item.record, item.event
        if event is None:
            assert item.error is not None
            done = await self._attempts.invalid(record, item.error)
        elif item.plan in (_SKIP, _HANDLED):
            state.duplicate()
            done = True
        elif item.plan == _SLOW:
            done = await self._attempts.handle(record, event)
        elif item.plan == _FAILED:
            state.failed(item.failure, 1)  # type: ignore[arg-type]
            done = await self._attempts.handle(record, event, failure=item.failure)
        else:
            item.started = True
            try:
                await self._run(event)
            except BaseException as exc:
                state.failed(exc, 1)
                if item.claim is not None:
                    await self._release([item.claim])
                if not isinstance(exc, Exception):
                    raise
                done = await self._attempts.handle(record, event, failure=exc)
            else:
                state.outcome(HANDLED)
                if item.claim is not None:
                    self._completer.add(item.claim, item)
                    return True
                done = True
        if done:
            self.mark_done(item)
        return done

    async def _run(self, event: ReceivedEvent) -> None:
        if self._inbox is not None:
            await self._inbox.run_once(event.id, self._name, functools.partial(self._fn, event))
        elif self._sync_fn:
            # A sync handler would block the event loop, and with it heartbeats.
            await asyncio.to_thread(self._fn, event)
        else:
            await self._fn(event)

    def mark_done(self, item: _Item) -> None:
        """The record is handled and recorded: its offset may be committed."""
        item.mark.done(item.record.offset)

    async def _complete_many(self, claims: list[Claim]) -> None:
        assert self._claims is not None
        await self._store_call(self._claims.complete_many, claims)

    async def _store_call(self, method: Callable[..., Any], *args: Any) -> Any:
        if self._sync_fn:
            return await asyncio.to_thread(method, *args)
        return await method(*args)

    async def _release(self, claims: list[Claim]) -> None:
        assert self._claims is not None
        try:
            await self._store_call(self._claims.release_many, claims)
        except Exception as exc:
            # The claims expire after processing_ttl_ms; the records are retried anyway.
            logger.warning("releasing %d claims failed: %r", len(claims), exc)

    async def _release_unused(self, items: list[_Item]) -> None:
        # Claimed, but the runner stopped (or lost the partition) before their turn.
        unused = [i.claim for i in items if i.claim is not None and not i.started]
        if unused:
            await self._release(unused)


def _decode(
    batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]],
    marks: Mapping[TopicPartition, OffsetWatermark],
) -> list[_Item]:
    items = []
    for tp, records in batch.items():
        mark = marks[tp]
        for record in records:
            try:
                event, error = ReceivedEvent.from_record(record), None
            except InvalidRecordError as exc:
                event, error = None, exc
            items.append(_Item(tp, record, mark, (tp, record.key), event, error))
    return items
