"""One record's way through the runner after the fast path: retries, backoff, dead letter."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.structs import ConsumerRecord

from ..exceptions import (
    ConsumerError,
    EventInProgressError,
    InvalidRecordError,
    StoreUnavailableError,
)
from .dead_letter import dead_letter_headers
from .received import ReceivedEvent
from .settings import RunnerSettings
from .tracing import HANDLED, current_event_span

__all__ = ["Attempts"]

logger = logging.getLogger("transactional_outbox.consumer")


class Attempts:
    """Calls a record's handler until it succeeds, is dead-lettered, or the runner stops.

    ``call`` is the whole per-record handler (with a dedup store: the decorated
    one, which claims, runs and completes one record). Methods return ``True``
    once the record is done with (handled or dead-lettered), ``False`` if the
    runner began stopping first; they raise when the record can be neither
    handled nor dead-lettered.
    """

    def __init__(
        self,
        settings: RunnerSettings,
        call: Callable[[ReceivedEvent], Awaitable[object]],
        stopping: asyncio.Event,
        producer: Any,
    ) -> None:
        self.settings = settings
        self._call = call
        self._stopping = stopping
        self._producer = producer

    async def invalid(self, record: ConsumerRecord[Any, Any], exc: InvalidRecordError) -> bool:
        """A record without a valid ``id``: dead-letter it, or raise without a DLQ topic."""
        if self.settings.dead_letter_topic is None:
            logger.error("%s; no dead_letter_topic set: stopping", exc)
            raise exc
        await self.dead_letter(record, exc, attempts=0)
        return True

    async def handle(
        self,
        record: ConsumerRecord[Any, Any],
        event: ReceivedEvent,
        *,
        failure: Exception | None = None,
    ) -> bool:
        """Handle ``event``; ``failure``: its first attempt already failed with this."""
        failures = outage = 0
        state = current_event_span(event.id)  # None without OpenTelemetry
        while True:
            if failure is None:
                try:
                    if state is not None:
                        state.attempt(failures + 1)
                        state.last = None
                    await self._call(event)
                    if state is not None and state.last is None:
                        state.outcome(HANDLED)  # not decorated: it ran (else it set it)
                    return True
                except EventInProgressError as exc:
                    # Not a failure: another worker holds the claim, and the claim's
                    # TTL bounds how long; it must not use up attempts.
                    delay = self.backoff(failures + 1)
                    logger.info("%s; retrying in %.2fs", exc, delay)
                    if await self._wait_stopping(delay):
                        return False
                    continue
                except StoreUnavailableError as exc:
                    # Not the handler's failure either: wait for the store however long
                    # (a failover takes seconds to minutes), or dead letters would hold
                    # events that never ran. Stopping ends the wait; nothing is committed.
                    outage += 1
                    delay = self.backoff(outage)
                    logger.warning(
                        "store unavailable for event %s (%r); waiting %.2fs for it",
                        event.id,
                        exc.__cause__ or exc,
                        delay,
                    )
                    if await self._wait_stopping(delay):
                        return False
                    continue
                except Exception as exc:
                    failure = exc
                    if state is not None:
                        state.failed(exc, failures + 1)
            failures += 1
            if failures >= self.settings.max_attempts:
                return await self._give_up(record, event, failure, failures)
            delay = self.backoff(failures)
            logger.warning(
                "handler failed on event %s (%s/%s@%s), attempt %d of %d, retrying in %.2fs: %r",
                event.id,
                record.topic,
                record.partition,
                record.offset,
                failures,
                self.settings.max_attempts,
                delay,
                failure,
            )
            failure = None
            if await self._wait_stopping(delay):
                return False

    async def _give_up(
        self, record: ConsumerRecord[Any, Any], event: ReceivedEvent, exc: Exception, attempts: int
    ) -> bool:
        where = f"{record.topic}/{record.partition}@{record.offset}"
        if self.settings.dead_letter_topic is None:
            logger.error(
                "handler failed on event %s (%s) %d times; no dead_letter_topic set: stopping",
                event.id,
                where,
                attempts,
                exc_info=exc,
            )
            raise ConsumerError(
                f"event {event.id} ({where}) failed {attempts} times: {exc!r}"
            ) from exc
        logger.error(
            "handler failed on event %s (%s) %d times: dead-lettering it",
            event.id,
            where,
            attempts,
            exc_info=exc,
        )
        state = current_event_span(event.id)
        if state is not None:
            state.span.set_attribute("outbox.dead_lettered", True)
        await self.dead_letter(record, exc, attempts=attempts)
        return True

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (exponential, with jitter)."""
        s = self.settings
        delay = min(s.backoff_max_ms, s.backoff_initial_ms * 2.0 ** (attempt - 1)) / 1000
        # Jitter spreads retries of many consumers hitting the same broken dependency.
        return delay * random.uniform(0.5, 1.0)

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the runner began stopping."""
        return self._stopping

    async def _wait_stopping(self, delay: float) -> bool:
        try:
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        except TimeoutError:
            return False
        return True

    async def dead_letter(
        self, record: ConsumerRecord[Any, Any], error: Exception, *, attempts: int
    ) -> None:
        """Send ``record`` to its dead-letter topic with the ``dlq.*`` headers."""
        topic = self.settings.dead_letter_topic_for(record.topic)
        headers = dead_letter_headers(
            record, error, attempts=attempts, group_id=self.settings.group_id
        )
        # No timestamp: the dead letter gets the current time, so time-based
        # retention counts from now, not from the (maybe old) event time, which
        # stays in the ``timestamp`` header.
        await self._producer.send_and_wait(
            topic, value=record.value, key=record.key, headers=headers
        )
        logger.warning(
            "record %s/%s@%s sent to dead-letter topic %s",
            record.topic,
            record.partition,
            record.offset,
            topic,
        )
