"""A store that cannot be reached is StoreUnavailableError (retried without counting an
attempt), never confused with the handler's own errors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.exceptions

from transactional_outbox import OutboxEvent, StoreUnavailableError
from transactional_outbox.consumer import ReceivedEvent, idempotent_consumer
from transactional_outbox.consumer.memory import InMemoryStore
from transactional_outbox.consumer.store import store_unavailable

pytestmark = pytest.mark.unit


def _event() -> ReceivedEvent:
    e = OutboxEvent.create(aggregate_type="order", aggregate_id="1", event_type="E", payload={})
    return ReceivedEvent(
        id=e.id,
        aggregate_type="order",
        aggregate_id="1",
        event_type="E",
        payload=b"{}",
        headers={},
        timestamp=e.timestamp,
    )


class _Flaky(InMemoryStore):
    def __init__(self, fail_on: str, error: Exception) -> None:
        super().__init__()
        self.fail_on, self.error = fail_on, error

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_on == "claim":
            raise self.error
        return super().claim(*args, **kwargs)

    def complete(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_on == "complete":
            raise self.error
        return super().complete(*args, **kwargs)


@pytest.mark.parametrize("where", ["claim", "complete"])
@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("refused"),
        redis.exceptions.ConnectionError("reset"),
        redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica"),
    ],
)
def test_an_unreachable_store_is_store_unavailable(where: str, error: Exception) -> None:
    @idempotent_consumer(store=_Flaky(where, error), consumer_name="c")
    def handler(event: ReceivedEvent) -> None:
        pass

    with pytest.raises(StoreUnavailableError) as info:
        handler(_event())
    assert info.value.__cause__ is error


def test_the_handlers_own_connection_error_stays_its_own() -> None:
    @idempotent_consumer(store=InMemoryStore(), consumer_name="c")
    def handler(event: ReceivedEvent) -> None:
        raise ConnectionError("the payment service is down")

    with pytest.raises(ConnectionError):
        handler(_event())


def test_a_wrong_call_is_not_an_outage() -> None:
    assert store_unavailable(redis.exceptions.TimeoutError())
    assert not store_unavailable(redis.exceptions.ResponseError("WRONGTYPE"))
    assert not store_unavailable(ValueError(str(uuid.uuid4())))
