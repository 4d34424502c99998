"""The event value type, its ids, validation and encoding.

Everything here is pure: no I/O, shared by the write side, the relay and the
consumer so the three agree byte for byte on what an event is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dt_time
from decimal import Decimal
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from .exceptions import InvalidEventError, SerializationError
from .record_format import (
    RESERVED_HEADERS,
    encode_headers,
    format_timestamp,
    id_text,
    own_headers,
    parse_headers,
    parse_timestamp,
)

__all__ = [
    "MAX_NAME_LENGTH",
    "RESERVED_HEADERS",
    "JsonSerializer",
    "OutboxEvent",
    "Serializer",
    "decode_headers",
    "encode_headers",
    "format_timestamp",
    "json_default",
    "kafka_headers",
    "parse_timestamp",
    "uuid7",
]

MAX_NAME_LENGTH = 255
"""Longest aggregate type, aggregate id or event type (VARCHAR(255))."""

MAX_HEADERS_BYTES = 65_535
"""The ``headers`` column is TEXT: 64 KiB of encoded JSON."""


_uuid7_lock = threading.Lock()
_uuid7_last = 0  # (ms << 12 | counter) of the last id, to stay monotonic within a process


def uuid7() -> uuid.UUID:
    """Return a new UUIDv7 (RFC 9562): 48-bit Unix ms, then a counter, then random bits.

    Ids made in one process are strictly increasing, even within one millisecond
    or if the wall clock steps back, so ids sort in creation order.
    """
    global _uuid7_last
    with _uuid7_lock:
        stamp = (time.time_ns() // 1_000_000) << 12
        # The 12-bit rand_a field is used as a counter (RFC 9562 method 1).
        _uuid7_last = stamp if stamp > _uuid7_last else _uuid7_last + 1
        ms_and_counter = _uuid7_last
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    ms = ms_and_counter >> 12
    counter = ms_and_counter & 0xFFF
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


@runtime_checkable
class Serializer(Protocol):
    """Turns a payload object into bytes. ``content_type`` becomes a header."""

    content_type: str

    def __call__(self, payload: Any) -> bytes:
        """Serialise ``payload``; raise ``TypeError``/``ValueError`` if it cannot be."""
        ...


def _pydantic_model(value: object) -> bool:
    # Only if pydantic is already imported: a model instance implies it is, and
    # the serializer never imports it (it is no dependency of this package).
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(value, pydantic.BaseModel)


def json_default(value: Any) -> Any:
    """The default serializer's mapping of non-JSON types (docs/writing.md, "Payloads").

    ``Decimal`` → string (exact), ``datetime``/``date``/``time`` → ISO 8601 (an aware
    datetime keeps its offset), ``UUID`` → canonical text, ``Enum`` → its value,
    dataclasses → object of their fields, pydantic models → ``model_dump(mode="json")``.
    Raises ``TypeError`` for anything else.
    """
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | dt_time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if _pydantic_model(value):
        return value.model_dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_JSON_SCALARS = (str, int, float, bool, type(None))


def _unserialisable(value: Any, path: str, default: Any, seen: set[int]) -> tuple[str, Any] | None:
    """The path and value of the first part of ``value`` JSON cannot take, if any."""
    if isinstance(value, _JSON_SCALARS):
        return None
    if id(value) in seen:
        return None  # a cycle: json.dumps reports it itself
    seen.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, _JSON_SCALARS):
                return f"{path} key {key!r}", key
            found = _unserialisable(item, f"{path}[{key!r}]", default, seen)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _unserialisable(item, f"{path}[{i}]", default, seen)
            if found:
                return found
        return None
    for convert in (json_default, default):
        if convert is None:
            continue
        try:
            converted = convert(value)
        except TypeError:
            continue
        return _unserialisable(converted, path, default, seen)
    return path, value


class JsonSerializer:
    """Default serializer: compact UTF-8 JSON, with everyday Python types mapped.

    See :func:`json_default` for the mapping (Decimal, datetime, UUID, Enum,
    dataclasses, pydantic models). ``default`` is tried for any other type, as
    :func:`json.dumps` would. A value of no known type raises
    :class:`SerializationError` naming its type and its path in the payload.
    """

    content_type = "application/json"

    def __init__(self, *, default: Any = None) -> None:
        self._default = default
        user = default

        def combined(value: Any) -> Any:
            try:
                return json_default(value)
            except TypeError:
                if user is None:
                    raise
            return user(value)

        self._combined = combined
        # One encoder, not one per call as json.dumps(**options) builds (~1 us an event).
        self._encode = json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=combined
        ).encode

    def __call__(self, payload: Any) -> bytes:
        """Encode ``payload`` as JSON bytes."""
        try:
            return self._encode(payload).encode()
        except TypeError as exc:
            found = _unserialisable(payload, "payload", self._default, set())
            if found is None:
                raise
            path, value = found
            raise SerializationError(
                path,
                value,
                f"type {type(value).__module__}.{type(value).__qualname__} cannot be "
                "serialised as JSON (supported: JSON types, Decimal, datetime, date, time, "
                "UUID, Enum, dataclasses, pydantic models); convert it, or pass "
                "JsonSerializer(default=...) or a serializer",
            ) from exc

    def __repr__(self) -> str:
        return "JsonSerializer()"


DEFAULT_SERIALIZER = JsonSerializer()


decode_headers = parse_headers  # the name this module has always exported


def kafka_headers(event: OutboxEvent) -> list[tuple[str, bytes]]:
    """The Kafka record headers of ``event`` (DESIGN §2): its own fields, then its headers.

    ``id`` is the canonical UUID text, as Debezium's EventRouter writes it.
    """
    out = own_headers(
        id_text(event.id.bytes),
        event.event_type.encode(),
        event.aggregate_type.encode(),
        event.aggregate_id.encode(),
        format_timestamp(event.timestamp).encode(),
    )
    for k, v in event.headers.items():
        out.append((k, v.encode()))
    return out


def _check_name(name: str, value: object) -> str:
    if value is None and name == "aggregate_id":
        # The usual cause: an autoincrement id read right after session.add(obj).
        raise InvalidEventError(
            name,
            value,
            "must be a str or int, not None; an autoincrement primary key is only set "
            "at flush: call session.flush() after session.add(...) and before "
            "add_event, or give the row a client-side id",
        )
    if not isinstance(value, str):
        raise InvalidEventError(name, value, f"must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidEventError(name, value, "must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidEventError(
            name, value, f"is {len(value)} characters, at most {MAX_NAME_LENGTH} allowed"
        )
    _check_utf8(name, value)
    return value


def _check_utf8(name: str, value: str) -> None:
    # Lone surrogates pass every str check but fail in the driver, after the
    # transaction has begun; catch them here instead.
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidEventError(name, value, f"is not encodable as UTF-8 ({exc.reason})") from None


def _check_headers(headers: object) -> dict[str, str]:
    if not isinstance(headers, Mapping):
        raise InvalidEventError("headers", headers, "must be a mapping of str to str")
    out: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str):
            raise InvalidEventError("headers", key, "header names must be str")
        if not isinstance(value, str):
            raise InvalidEventError(f"headers[{key!r}]", value, "header values must be str")
        _check_utf8("headers", key)
        _check_utf8(f"headers[{key!r}]", value)
        if key in RESERVED_HEADERS:
            raise InvalidEventError(
                f"headers[{key!r}]", value, "this name is reserved for the event's own field"
            )
        out[key] = value
    # A character encodes to at most 6 bytes ("\u001f") and a pair adds 6 more (quotes,
    # colon, comma): encode (~2 us) only a mapping that this bound cannot clear.
    bound = 2 + sum(6 * (len(k) + len(v) + 1) for k, v in out.items())
    if bound > MAX_HEADERS_BYTES and len(encode_headers(out).encode()) > MAX_HEADERS_BYTES:
        raise InvalidEventError("headers", "...", f"encode to more than {MAX_HEADERS_BYTES} bytes")
    return out


def _utc(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidEventError("timestamp", value, "must be a datetime")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # naive means UTC, as the DATETIME column stores it
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEvent:
    """One event, as stored in the outbox table and published to Kafka.

    Build it with :meth:`create`, which validates and serialises; the plain
    constructor trusts its arguments (it is what the relay uses for rows read
    back from the binlog).
    """

    id: uuid.UUID
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    timestamp: datetime

    @classmethod
    def create(
        cls,
        *,
        aggregate_type: str,
        aggregate_id: str | int,
        event_type: str,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        id: uuid.UUID | None = None,
        timestamp: datetime | None = None,
        serializer: Serializer | None = None,
    ) -> OutboxEvent:
        """Validate the fields, serialise the payload and return the event.

        ``payload`` may be ``bytes`` (kept as is), ``str`` (UTF-8 encoded) or
        anything ``serializer`` accepts (default: JSON of dicts, lists, Decimal,
        datetime, UUID, Enum, dataclasses and pydantic models, adding ``content-type:
        application/json`` unless the headers already name one). An int
        ``aggregate_id`` is turned into its decimal text.

        Raises :class:`InvalidEventError` (or :class:`SerializationError`)
        naming the field and value.
        """
        if isinstance(aggregate_id, int) and not isinstance(aggregate_id, bool):
            aggregate_id = str(aggregate_id)
        hdrs: dict[str, str] = {} if headers is None else _check_headers(headers)
        body: bytes
        if isinstance(payload, bytes | bytearray | memoryview):
            body = bytes(payload)
        elif isinstance(payload, str):
            try:
                body = payload.encode()
            except UnicodeEncodeError as exc:
                raise SerializationError(
                    "payload", payload, f"is not encodable as UTF-8 ({exc.reason})"
                ) from None
        else:
            ser = DEFAULT_SERIALIZER if serializer is None else serializer
            try:
                body = ser(payload)
            except SerializationError:
                raise
            except (TypeError, ValueError, OverflowError) as exc:
                raise SerializationError(
                    "payload", payload, f"cannot be serialised: {exc}"
                ) from exc
            if not isinstance(body, bytes):
                raise SerializationError(
                    "payload", payload, f"serializer returned {type(body).__name__}, not bytes"
                )
            if not any(k.lower() == "content-type" for k in hdrs):
                hdrs["content-type"] = ser.content_type
        if id is None:
            id = uuid7()
        elif not isinstance(id, uuid.UUID):
            raise InvalidEventError("id", id, "must be a uuid.UUID")
        return cls(
            id=id,
            aggregate_type=_check_name("aggregate_type", aggregate_type),
            aggregate_id=_check_name("aggregate_id", aggregate_id),
            event_type=_check_name("event_type", event_type),
            payload=body,
            headers=hdrs,
            timestamp=datetime.now(UTC) if timestamp is None else _utc(timestamp),
        )

    def __repr__(self) -> str:
        # Payloads can be large or sensitive; show their size only.
        return (
            f"OutboxEvent(id={self.id}, aggregate_type={self.aggregate_type!r}, "
            f"aggregate_id={self.aggregate_id!r}, event_type={self.event_type!r}, "
            f"payload=<{len(self.payload)} bytes>, timestamp={self.timestamp.isoformat()})"
        )
