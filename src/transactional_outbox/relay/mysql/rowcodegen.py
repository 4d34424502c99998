"""Generated row decoders: :func:`~.rowdecoder.decode_rows` written out for one column layout.

The generic decoder looks up each column's kind and size per row; for a fixed
layout those are constants, so the cut is written out column by column, with
the record building and its memo lookups inline. This is the binlog
reader's hottest loop: ``bench/reader_speed.py --generic`` measured the
generated decoder at 13.2 against 15.5 CPU µs per one-event transaction and
75 against 100 µs per ten-event one (BENCHMARKS.md). The generic decoder
stays as the reference the generated code is tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...exceptions import InvalidEventError
from ...record_format import COLUMNS, id_text, own_headers, timestamp_text
from ..routing import KafkaRecord
from ..rowrecord import SCALE, RejectedRow, RowMemo, rejected

__all__ = ["KIND_BLOB", "KIND_DT", "KIND_SKIP", "KIND_STR", "Decoder", "compile_decoder"]

Decoder = Callable[[bytes, RowMemo], list[KafkaRecord | RejectedRow]]

# Column kinds of a row plan's readers: (kind, size) per column.
KIND_STR, KIND_BLOB, KIND_DT, KIND_SKIP = 0, 1, 2, 3

_VARS = {
    "id": "c_id",
    "aggregatetype": "c_at",
    "aggregateid": "c_ai",
    "type": "c_ty",
    "payload": "c_pl",
    "headers": "c_hd",
    "timestamp": "c_ts",
}

_RECORD = """\
        try:
            if c_id is None or len(c_id) > 16:
                raise InvalidEventError("id", c_id, "must be 16 bytes")
            if c_pl is None:
                raise InvalidEventError("payload", None, "must not be NULL")
            if c_ts is None:
                raise InvalidEventError("timestamp", None, "must be a DATETIME")
            second = seconds_get(c_ts[0])
            if second is None:
                second = memo.second(c_ts[0])
            micro = MICRO
            user = None
            if c_hd:
                user = headers_get(c_hd)
                if user is None:
                    user = memo.user_headers(c_hd)
            topic = topics_get(c_at)
            if topic is None:
                topic = memo.topic(c_at)
            if not c_ai:
                raise InvalidEventError("aggregateid", c_ai, "must be a non-empty string")
            try:
                c_ai.decode()
            except UnicodeDecodeError:
                raise InvalidEventError("aggregateid", c_ai, "is not valid UTF-8") from None
            if c_ty not in names:
                memo.name(c_ty, "type")
            headers = own_headers(
                id_text(c_id if len(c_id) == 16 else c_id.ljust(16, b"\\x00")),
                c_ty,
                c_at,
                c_ai,
                timestamp_text(second[0], micro),
            )
            if user:
                headers += user
            ms = second[1] * 1000 + micro // 1000
            append(new(KafkaRecord, (topic, c_ai, c_pl, headers, ms)))
        except InvalidEventError as exc:
            append(rejected(exc, c_id, c_ai))
    return out
"""


def compile_decoder(
    readers: tuple[tuple[int, int], ...], index: dict[str, int], null_bytes: int
) -> Decoder:
    """Generate the decoder of one column layout (a plan's readers, column index, null bytes)."""
    needed = {index[name]: _VARS[name] for name in COLUMNS}
    lines = [
        "def decode(data, memo):",
        "    out = []",
        "    append = out.append",
        "    topics_get = memo.topics.get",
        "    seconds_get = memo.seconds.get",
        "    headers_get = memo.headers.get",
        "    names = memo.names",
        "    pos, end = 0, len(data)",
        "    while pos < end:",
        "        try:",
        f"            nulls = from_bytes(data[pos : pos + {null_bytes}], 'little')",
        f"            pos += {null_bytes}",
    ]
    for i, (kind, size) in enumerate(readers):
        target = needed.get(i)
        body: list[str] = []
        if kind == KIND_SKIP:
            if size < 0:
                body.append(f"pos += {-size} + from_bytes(data[pos : pos + {-size}], 'little')")
            else:
                body.append(f"pos += {size}")
        elif kind == KIND_DT:
            fbytes = (size + 1) // 2
            frac = f"from_bytes(data[pos + 5 : pos + {5 + fbytes}], 'big')" if fbytes else "0"
            if target:
                body.append(f"{target} = (from_bytes(data[pos : pos + 5], 'big'), {frac})")
            body.append(f"pos += {5 + fbytes}")
        else:
            if size == 1:
                body.append("n = data[pos]")
            elif size == 2:
                body.append("n = data[pos] | (data[pos + 1] << 8)")
            else:
                body.append(f"n = from_bytes(data[pos : pos + {size}], 'little')")
            if target:
                body.append(f"{target} = data[pos + {size} : pos + {size} + n]")
            body.append(f"pos += {size} + n")
        lines.append(f"            if nulls & {1 << i}:")
        lines.append(f"                {target} = None" if target else "                pass")
        lines.append("            else:")
        lines.extend(f"                {line}" for line in body)
    lines += [
        "        except IndexError:",  # data[pos] past the end: a truncated row
        "            pos = end + 1",
        "        if pos > end:",
        "            raise InvalidEventError('row', len(data), 'row image is truncated')",
    ]
    fsp = readers[index["timestamp"]][1]
    # Odd precisions store one digit more than they keep (as microseconds() in .rowrecord).
    micro = f"(c_ts[1] // 10) * {SCALE[fsp]}" if fsp % 2 else f"c_ts[1] * {SCALE[fsp]}"
    source = "\n".join(lines) + "\n" + _RECORD.replace("MICRO", micro)
    namespace: dict[str, Any] = {
        "from_bytes": int.from_bytes,
        "InvalidEventError": InvalidEventError,
        "KafkaRecord": KafkaRecord,
        "new": tuple.__new__,
        "own_headers": own_headers,
        "id_text": id_text,
        "timestamp_text": timestamp_text,
        "rejected": rejected,
    }
    exec(compile(source, f"<outbox row decoder {readers}>", "exec"), namespace)
    decoder: Decoder = namespace["decode"]
    return decoder
