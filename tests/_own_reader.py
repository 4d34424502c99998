"""Test helper: read a binlog range with the relay's own reader (protocol + parser)."""

from __future__ import annotations

from transactional_outbox.relay.mysql.binlog.events import BinlogParser, DumpEnded
from transactional_outbox.relay.mysql.binlog.protocol import DumpConnection
from transactional_outbox.relay.mysql.rowdecoder import RejectedRow
from transactional_outbox.relay.position import BinlogPosition
from transactional_outbox.relay.routing import KafkaRecord, TopicRouter

from .conftest import Stack


def read_batches(
    stack: Stack,
    database: str,
    start: tuple[str, int] | BinlogPosition,
    router: TopicRouter,
    *,
    table: str = "outbox",
    gtid: str | None = None,
    cap: int = 2000,
) -> list[tuple[list[KafkaRecord | RejectedRow], BinlogPosition]]:
    """Like :func:`read_records`, as the hand-overs: (records, position after them)."""
    if isinstance(start, tuple):
        start = BinlogPosition(file=start[0], pos=start[1], gtid=gtid)
    out: list[tuple[list[KafkaRecord | RejectedRow], BinlogPosition]] = []
    _read(stack, database, start, router, table, gtid, cap, out)
    return out


def read_records(
    stack: Stack,
    database: str,
    start: tuple[str, int] | BinlogPosition,
    router: TopicRouter,
    *,
    table: str = "outbox",
    gtid: str | None = None,
    cap: int = 2000,
) -> tuple[list[KafkaRecord | RejectedRow], list[BinlogPosition]]:
    """Every committed outbox record from ``start`` to the binlog's end, and each
    hand-over position (one per read), as the relay's source would see them."""
    out = read_batches(stack, database, start, router, table=table, gtid=gtid, cap=cap)
    return [r for records, _ in out for r in records], [at for _, at in out]


def _read(
    stack: Stack,
    database: str,
    start: BinlogPosition,
    router: TopicRouter,
    table: str,
    gtid: str | None,
    cap: int,
    out: list[tuple[list[KafkaRecord | RejectedRow], BinlogPosition]],
) -> None:
    url = stack.mysql_url
    dump = DumpConnection(
        {"host": url.host, "port": url.port, "user": url.username, "password": url.password},
        server_id=4700 + (hash(database) % 200),
        is_mariadb=True,
        heartbeat_seconds=1.0,
        read_timeout=10.0,
        file=start.file,
        pos=start.pos,
        gtid=gtid,
        blocking=False,
    )
    parser = BinlogParser(
        schema=database,
        table=table,
        router=router,
        start=start,
        is_mariadb=True,
        track_gtid=start.gtid is not None,
        layouts={},
        cap=cap,
    )
    buf, pos = b"", 0
    carry: list[KafkaRecord | RejectedRow] = []  # open-transaction rows taken early
    try:
        while True:
            try:
                pos = parser.feed(buf, pos)
            except DumpEnded:
                break
            # Stopped at the cap: more packets (up to the end-of-dump one) may wait in
            # buf, so parse on before reading the socket, as the relay's source does.
            stopped_early = len(parser.records) >= cap
            if parser.commits:
                records, at = parser.take_committed()
                out.append((carry + records, at))
                carry = []
            if len(parser.records) >= cap:
                carry += parser.take_open()
            if stopped_early:
                continue
            data = dump.recv()
            buf, pos = buf[pos:] + data, 0
    finally:
        dump.close()
    if parser.commits:
        records, at = parser.take_committed()
        out.append((carry + records, at))
