"""Errors specific to the consumer side (the shared ones are in ``exceptions``)."""

from __future__ import annotations

from ..exceptions import ConsumerError

__all__ = ["EventInProgressError"]


class EventInProgressError(ConsumerError):
    """Another worker holds the claim on this event and did not finish in time.

    Raised only by a Redis store with ``wait_timeout`` set. The event is neither
    done nor failed: retry it later (the runner does).
    """

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"event {key!r} is being processed by another worker; retry later")
