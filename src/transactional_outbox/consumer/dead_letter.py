"""The record the runner sends to a dead-letter topic: the original plus why it failed."""

from __future__ import annotations

from .received import RecordLike

__all__ = ["DLQ_HEADER_PREFIX", "dead_letter_headers"]

DLQ_HEADER_PREFIX = "dlq."
"""Headers the runner adds to a dead-lettered record start with this."""

_MAX_ERROR_CHARS = 2000


def dead_letter_headers(
    record: RecordLike, error: BaseException, *, attempts: int, group_id: str
) -> list[tuple[str, bytes]]:
    """The original headers, then ``dlq.*`` ones describing the failure.

    ``dlq.error`` (message, truncated), ``dlq.error.type`` (qualified class
    name), ``dlq.attempts`` (0: rejected without calling the handler),
    ``dlq.topic`` / ``dlq.partition`` / ``dlq.offset`` (where the original is),
    ``dlq.group`` (the consumer group that gave up).
    """
    # A record replayed from a dead-letter topic that fails again must carry only
    # the latest failure's headers.
    headers = [(k, v) for k, v in record.headers or () if not k.startswith(DLQ_HEADER_PREFIX)]
    message = str(error) or repr(error)
    if len(message) > _MAX_ERROR_CHARS:
        message = message[: _MAX_ERROR_CHARS - 3] + "..."
    kind = type(error)
    headers += [
        ("dlq.error", message.encode("utf-8", "replace")),
        ("dlq.error.type", f"{kind.__module__}.{kind.__qualname__}".encode()),
        ("dlq.attempts", str(attempts).encode()),
        ("dlq.topic", record.topic.encode()),
        ("dlq.partition", str(record.partition).encode()),
        ("dlq.offset", str(record.offset).encode()),
        ("dlq.group", group_id.encode()),
    ]
    return headers
