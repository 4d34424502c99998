"""The startup retry both databases share: wait out unreachable servers, raise the rest."""

from __future__ import annotations

import asyncio

import pytest

from transactional_outbox import ConfigurationError
from transactional_outbox.relay.database import until_reachable

pytestmark = pytest.mark.unit


def _attempts(*outcomes: object):  # type: ignore[no-untyped-def]
    calls = list(outcomes)

    async def attempt() -> object:
        outcome = calls.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return attempt


async def test_unreachable_is_retried_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_wait(aw: object, timeout: float) -> None:  # noqa: ASYNC109 (wait_for's own)
        waits.append(timeout)
        aw.close()  # type: ignore[attr-defined]
        raise TimeoutError

    monkeypatch.setattr(asyncio, "wait_for", no_wait)
    got = await until_reachable(
        _attempts(OSError("refused"), OSError("refused"), OSError("refused"), "ready"),
        retried=(OSError,),
        verdict=lambda exc: None,
        stopping=asyncio.Event(),
        max_delay=1.5,
    )
    assert got == "ready" and waits == [0.5, 1.0, 1.5]


async def test_the_verdict_raises_the_error_or_the_misconfiguration() -> None:
    refused = OSError("login refused")
    with pytest.raises(OSError) as same:
        await until_reachable(
            _attempts(refused),
            retried=(OSError,),
            verdict=lambda exc: exc,
            stopping=asyncio.Event(),
            max_delay=1,
        )
    assert same.value is refused
    with pytest.raises(ConfigurationError) as named:
        await until_reachable(
            _attempts(refused),
            retried=(OSError,),
            verdict=lambda exc: ConfigurationError("database_url", "refused"),
            stopping=asyncio.Event(),
            max_delay=1,
        )
    assert named.value.setting == "database_url" and named.value.__cause__ is None


async def test_stopping_ends_the_wait() -> None:
    stopping = asyncio.Event()
    stopping.set()
    got = await until_reachable(
        _attempts(OSError("refused"), "never"),
        retried=(OSError,),
        verdict=lambda exc: None,
        stopping=stopping,
        max_delay=1,
    )
    assert got is None
