"""Dead-letter records (DESIGN §2): what the relay sends for an event it cannot deliver. Pure.

An event Kafka refuses for good, or an outbox row that is no valid event,
goes to the dead-letter topic as a JSON body naming the event and the
reason, keyed like the original so it lands beside its aggregate's events.
"""

from __future__ import annotations

import json
from typing import Any

from .routing import KafkaRecord, event_of, record_id
from .rowrecord import RejectedRow

__all__ = ["dead_letter_record", "rejected_event_id", "rejection_reason"]


def rejected_event_id(rejected: KafkaRecord | RejectedRow) -> str:
    """The id to name in errors and logs for a refused record or an invalid row."""
    if isinstance(rejected, RejectedRow):
        return rejected.event_id or "(no valid id)"
    return record_id(rejected)


def rejection_reason(rejected: KafkaRecord | RejectedRow, reason: str) -> str:
    """The reason as reported: an invalid row's says where the row was."""
    if isinstance(rejected, RejectedRow):
        return f"invalid outbox row {rejected.where}: {reason}"
    return reason


def dead_letter_record(
    rejected: KafkaRecord | RejectedRow, reason: str, *, topic: str, now_ms: int
) -> KafkaRecord:
    """The dead-letter record for ``rejected``; ``reason`` as :func:`rejection_reason` gives it."""
    body: dict[str, Any]
    if isinstance(rejected, RejectedRow):
        key = (rejected.aggregate_id or rejected.event_id or "").encode()
        headers = [("dlq.reason", reason.encode())]
        body = {"id": rejected.event_id, "aggregateid": rejected.aggregate_id}
        if rejected.table:
            body["table"] = rejected.table
    else:
        event = event_of(rejected)
        key = rejected.key
        headers = [*rejected.headers, ("dlq.reason", reason.encode())]
        body = {
            "id": record_id(rejected),
            "aggregatetype": event.aggregate_type,
            "aggregateid": event.aggregate_id,
            "type": event.event_type,
            "timestamp": event.timestamp.isoformat(),
            "payload_bytes": len(event.payload),
            "topic": rejected.topic,
        }
    body["reason"] = reason
    return KafkaRecord(
        topic=topic, key=key, value=json.dumps(body).encode(), headers=headers, timestamp_ms=now_ms
    )
