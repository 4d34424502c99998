"""The suite's one way to wait for a condition: poll it, and fail loudly at a deadline.

Tests await a condition instead of sleeping for a guessed time, and a condition
that never comes true fails the test with what was awaited (and, when ``what``
is a callable, the state seen at the deadline), never a silent give-up::

    await wait_until(lambda: len(col.records) >= 3, what="3 records")   # async tests
    wait_until_sync(lambda: proc.poll() is not None, what="the exit")   # sync tests

The condition may be a plain callable or, for :func:`wait_until`, return an
awaitable (``async def`` checks that ask a server). ``within`` is a deadline for
a broken run, not a measurement: it is generous, and a test never asserts how
fast something happened (durations belong in ``bench/``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["Poll", "wait_until", "wait_until_sync"]

What = str | Callable[[], str]


class Poll:
    """The deadline and the failure of one wait; both forms of the helper use it."""

    def __init__(self, within: float, what: What) -> None:
        self.within = within
        self.what = what
        self.deadline = time.monotonic() + within
        self.checks = 0

    def done(self, result: object) -> bool:
        """Whether the condition holds; raises ``AssertionError`` past the deadline."""
        self.checks += 1
        if result:
            return True
        if time.monotonic() > self.deadline:
            what = self.what() if callable(self.what) else self.what
            raise AssertionError(
                f"timed out after {self.within}s ({self.checks} checks) waiting for {what}"
            )
        return False


async def wait_until(
    condition: Callable[[], object | Awaitable[object]],
    *,
    within: float = 20.0,
    what: What = "condition",
    every: float = 0.02,
) -> None:
    """Poll ``condition`` (sync, or returning an awaitable) until it is true; fail the test
    after ``within`` seconds with ``what`` in the message."""
    poll = Poll(within, what)
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if poll.done(result):
            return
        await asyncio.sleep(every)


def wait_until_sync(
    condition: Callable[[], object],
    *,
    within: float = 20.0,
    what: What = "condition",
    every: float = 0.05,
) -> None:
    """:func:`wait_until` for tests that are not async (blocks the thread between checks)."""
    poll = Poll(within, what)
    while not poll.done(condition()):
        time.sleep(every)
