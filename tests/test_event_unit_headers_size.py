"""The 64 KiB limit on encoded headers, around the shortcut that skips encoding small ones."""

from __future__ import annotations

import pytest

from transactional_outbox import InvalidEventError, OutboxEvent
from transactional_outbox.event import MAX_HEADERS_BYTES
from transactional_outbox.record_format import encode_headers

pytestmark = pytest.mark.unit


def _event(headers: dict[str, str]) -> OutboxEvent:
    return OutboxEvent.create(
        aggregate_type="order", aggregate_id="1", event_type="E", payload=b"x", headers=headers
    )


@pytest.mark.parametrize("char", ["a", "\x01", "é", "\U0001f600", '"'])
def test_headers_up_to_the_limit_pass_one_byte_more_fails(char: str) -> None:
    # Pick a value length whose encoding is exactly at the limit (or just under).
    per_char = len(encode_headers({"k": char}).encode()) - len(encode_headers({"k": ""}).encode())
    empty = len(encode_headers({"k": ""}).encode())
    count = (MAX_HEADERS_BYTES - empty) // per_char
    fits = {"k": char * count}
    assert len(encode_headers(fits).encode()) <= MAX_HEADERS_BYTES
    assert _event(fits).headers == fits
    over = {"k": char * (count + 1)}
    assert len(encode_headers(over).encode()) > MAX_HEADERS_BYTES
    with pytest.raises(InvalidEventError, match="encode to more than"):
        _event(over)


def test_many_small_headers_over_the_limit_fail() -> None:
    headers = {f"h{i}": "v" * 60 for i in range(1200)}
    assert len(encode_headers(headers).encode()) > MAX_HEADERS_BYTES
    with pytest.raises(InvalidEventError, match="encode to more than"):
        _event(headers)


@pytest.mark.parametrize(
    "headers",
    [{}, {"content-type": "application/json"}, {"a": 'é\x01"'}, {"big": "v" * 2000}],
)
def test_session_row_headers_are_the_encoded_headers(headers: dict[str, str]) -> None:
    from transactional_outbox.session import _row

    for _ in range(2):  # the second time from the memo (when small)
        assert _row(_event(headers))[5] == encode_headers(_event(headers).headers)
