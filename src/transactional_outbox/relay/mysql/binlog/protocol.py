"""The replication dump protocol over a PyMySQL connection: connect, register, dump, read.

PyMySQL does the handshake, authentication and the few ``SET`` statements;
then the relay writes COM_REGISTER_SLAVE and COM_BINLOG_DUMP (or MySQL's
COM_BINLOG_DUMP_GTID) itself and reads the socket in large chunks, framing
packets in :mod:`.events`: no per-packet object from any library. The only
PyMySQL internal relied on is the connection's socket (``_sock``), checked
when the connection opens (``_force_close`` is used when present).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import pymysql

from ....exceptions import OutboxError
from ...position import MySQLGtidSet
from .events import ServerError

__all__ = [
    "DumpConnection",
    "binlog_dump",
    "binlog_dump_gtid",
    "encode_mysql_gtid_set",
    "register_slave",
]

COM_BINLOG_DUMP = 0x12
COM_REGISTER_SLAVE = 0x15
COM_BINLOG_DUMP_GTID = 0x1E
BINLOG_DUMP_NON_BLOCK = 0x01
BINLOG_THROUGH_GTID = 0x04
MARIA_SLAVE_CAPABILITY_MINE = 4  # GTID events as they are, not rewritten to BEGIN
RECV_BYTES = 256 * 1024


def _packet(payload: bytes, seq: int = 0) -> bytes:
    """One MySQL client packet (payloads here are far below 16 MB)."""
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def register_slave(server_id: int) -> bytes:
    """COM_REGISTER_SLAVE: server id, empty host/user/password, port 0, rank 0, master 0."""
    return _packet(struct.pack("<BI", COM_REGISTER_SLAVE, server_id) + b"\0\0\0" + bytes(10))


def binlog_dump(server_id: int, file: str, pos: int, *, blocking: bool = True) -> bytes:
    """COM_BINLOG_DUMP from ``file``:``pos`` (MariaDB GTID mode: empty file, pos 4)."""
    flags = 0 if blocking else BINLOG_DUMP_NON_BLOCK
    return _packet(
        struct.pack("<BIHI", COM_BINLOG_DUMP, pos & 0xFFFFFFFF, flags, server_id) + file.encode()
    )


def encode_mysql_gtid_set(gtid: str) -> bytes:
    """A MySQL GTID set in the dump's binary form: ``n_sids`` then per source uuid
    ``uuid(16) n_intervals(8) (start(8) end_exclusive(8))*``, all little-endian."""
    parsed = MySQLGtidSet.parse(gtid)
    out = [struct.pack("<Q", len(parsed.intervals))]
    for source in sorted(parsed.intervals):
        if ":" in source:
            raise OutboxError(
                f"cannot resume from tagged GTIDs ({source}); resume by file and position"
            )
        intervals = parsed.intervals[source]
        out.append(bytes.fromhex(source.replace("-", "")))
        out.append(struct.pack("<Q", len(intervals)))
        out.extend(struct.pack("<QQ", lo, hi + 1) for lo, hi in intervals)
    return b"".join(out)


def binlog_dump_gtid(server_id: int, gtid: str, *, blocking: bool = True) -> bytes:
    """MySQL COM_BINLOG_DUMP_GTID: stream every transaction not in ``gtid``."""
    data = encode_mysql_gtid_set(gtid)
    flags = BINLOG_THROUGH_GTID | (0 if blocking else BINLOG_DUMP_NON_BLOCK)
    return _packet(
        struct.pack("<BHII", COM_BINLOG_DUMP_GTID, flags, server_id, 0)
        + struct.pack("<QI", 4, len(data))
        + data
    )


class DumpConnection:
    """One replication connection: opened, registered and dumping once constructed.

    ``gtid`` (MariaDB ``domain-server-seq`` list, or a MySQL GTID set) starts
    from a GTID state; else ``file``:``pos``. ``blocking=False`` (tests,
    tools) makes the server end the dump at the binlog's end. ``before_dump`` is
    called with a cursor of the same connection before the dump starts (to
    check which server it reached). Errors: PyMySQL's on connect,
    :class:`ServerError` for an error the server sends, ``OSError`` for a
    lost or silent connection (the socket times out after ``read_timeout``).
    """

    def __init__(
        self,
        connect_args: dict[str, Any],
        *,
        server_id: int,
        is_mariadb: bool,
        heartbeat_seconds: float,
        read_timeout: float,
        file: str = "",
        pos: int = 4,
        gtid: str | None = None,
        blocking: bool = True,
        before_dump: Callable[[Any], None] | None = None,
    ) -> None:
        self._conn = pymysql.connect(**{**connect_args, "read_timeout": read_timeout})
        try:
            sock = getattr(self._conn, "_sock", None)
            if not isinstance(sock, socket.socket):
                raise OutboxError(
                    f"PyMySQL {pymysql.__version__} has no socket where the relay expects "
                    "one (Connection._sock); install a PyMySQL version the relay supports"
                )
            self._sock: socket.socket = sock
            self._prepare(is_mariadb, heartbeat_seconds, gtid)
            if before_dump is not None:
                # On this connection, so what it checks is the server that will stream.
                with self._conn.cursor() as cur:
                    before_dump(cur)
            sock.settimeout(read_timeout)
            sock.sendall(register_slave(server_id))
            self._expect_ok()
            if gtid is not None and not is_mariadb:
                sock.sendall(binlog_dump_gtid(server_id, gtid, blocking=blocking))
            elif gtid is not None:
                sock.sendall(binlog_dump(server_id, "", 4, blocking=blocking))
            else:
                sock.sendall(binlog_dump(server_id, file, pos, blocking=blocking))
        except BaseException:
            self.close()
            raise

    def _prepare(self, is_mariadb: bool, heartbeat_seconds: float, gtid: str | None) -> None:
        with self._conn.cursor() as cur:
            # Checksummed events as the files hold them; FORMAT_DESCRIPTION
            # tells per file whether a CRC32 ends each event.
            cur.execute("SET @master_binlog_checksum = @@global.binlog_checksum")
            cur.execute("SET @master_heartbeat_period = %s", (int(heartbeat_seconds * 1e9),))
            if is_mariadb:
                cur.execute("SET @mariadb_slave_capability = %s", (MARIA_SLAVE_CAPABILITY_MINE,))
                if gtid is not None:
                    cur.execute("SET @slave_connect_state = %s", (gtid,))
                    cur.execute("SET @slave_gtid_strict_mode = 0")
                    cur.execute("SET @slave_gtid_ignore_duplicates = 0")

    def _expect_ok(self) -> None:
        head = self._recv_exactly(4)
        length = int.from_bytes(head[:3], "little")
        payload = self._recv_exactly(length)
        if payload[:1] == b"\xff":
            code = int.from_bytes(payload[1:3], "little")
            text = payload[3:]
            if text[:1] == b"#":
                text = text[6:]
            raise ServerError(code, text.decode("utf-8", "replace"))

    def _recv_exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self._sock.recv(n - len(out))
            if not chunk:
                raise ConnectionResetError("the server closed the replication connection")
            out += chunk
        return out

    def recv(self) -> bytes:
        """The next bytes of the stream (blocks; never empty: EOF raises)."""
        data = self._sock.recv(RECV_BYTES)
        if not data:
            raise ConnectionResetError("the server closed the replication connection")
        return data

    def shutdown(self) -> None:
        """Wake a thread blocked in :meth:`recv` (safe from another thread)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the socket without a COM_QUIT: the dump cannot take commands."""
        sock = getattr(self._conn, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(Exception):
            self._conn._force_close()  # type: ignore[attr-defined]
