"""PostgreSQL's frontend/backend protocol (v3), just what the relay needs, over a socket.

Startup (TLS when asked, then trust, password, md5 or SCRAM-SHA-256 logins),
simple queries (text results), and the streaming replication sub-protocol:
``START_REPLICATION`` switches the connection to CopyBoth, after which the
socket is read in large chunks and framed by :mod:`.pgoutput` with no object per
message. Why not a driver: psycopg 3 has no replication protocol, and psycopg2's
``LogicalReplicationConnection`` builds a ``ReplicationMessage`` per WAL message
(measured in ``bench/pg_reader_speed.py``; see docs/postgres-design.md).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import socket
import ssl
import struct
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from ...exceptions import ConfigurationError, OutboxError

__all__ = [
    "RECV_BYTES",
    "PgConnectParams",
    "PgServerError",
    "PgWire",
    "quote_ident",
    "quote_literal",
]

RECV_BYTES = 256 * 1024
_PROTOCOL_3 = 196608
_SSL_REQUEST = 80877103
_SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


class PgServerError(OutboxError):
    """An ErrorResponse of the server: ``code`` is its SQLSTATE, ``message`` its text."""

    def __init__(self, code: str, message: str, severity: str = "ERROR") -> None:
        self.code = code
        self.message = message
        self.severity = severity
        super().__init__(f"{severity} {code}: {message}")

    def __reduce__(self) -> tuple[type[PgServerError], tuple[str, str, str]]:
        return (type(self), (self.code, self.message, self.severity))


@dataclass(frozen=True, slots=True, kw_only=True)
class PgConnectParams:
    """Where and how to log in. Built from a ``postgresql://`` URL by :meth:`from_url`."""

    host: str
    port: int = 5432
    user: str
    password: str = field(default="", repr=False)
    database: str
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    connect_timeout: float = 10.0
    application_name: str = "outbox-relay"

    @classmethod
    def from_url(cls, url: str, *, setting: str = "database_url") -> PgConnectParams:
        """Parse ``postgresql://user:password@host:port/database?sslmode=...``."""
        parts = urlsplit(url)
        scheme = parts.scheme.partition("+")[0]
        if scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(setting, f"scheme {parts.scheme!r} is not postgresql://")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sslmode = query.get("sslmode", "prefer")
        if sslmode not in _SSLMODES:
            raise ConfigurationError(setting, f"sslmode={sslmode!r} is not one of {_SSLMODES}")
        if not parts.path.strip("/"):
            raise ConfigurationError(setting, "names no database (postgresql://.../DATABASE)")
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or 5432,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            database=unquote(parts.path.strip("/")),
            sslmode=sslmode,
            sslrootcert=query.get("sslrootcert"),
        )


def quote_literal(value: str) -> str:
    """``value`` as an SQL string literal (standard_conforming_strings, on since 9.1)."""
    if "\0" in value:
        raise ValueError("a NUL character cannot be sent to PostgreSQL")
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    if "\0" in name:
        raise ValueError("a NUL character cannot be sent to PostgreSQL")
    return '"' + name.replace('"', '""') + '"'


def _cstr(value: str) -> bytes:
    return value.encode() + b"\0"


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _fields(body: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode(errors="replace")
    return out


def error_of(body: bytes) -> PgServerError:
    """The :class:`PgServerError` of an ErrorResponse body."""
    f = _fields(body)
    return PgServerError(f.get("C", "XX000"), f.get("M", "?"), f.get("S", "ERROR"))


class PgWire:
    """One connection. ``replication=True`` opens a walsender (``replication=database``)."""

    def __init__(self, params: PgConnectParams, *, replication: bool = False) -> None:
        self.params = params
        self.parameters: dict[str, str] = {}
        self._buf = b""
        raw = socket.create_connection((params.host, params.port), params.connect_timeout)
        self._sock: socket.socket | ssl.SSLSocket = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if params.sslmode != "disable":
                self._start_tls(raw)
            self._startup(replication)
        except BaseException:
            self.close()
            raise

    # -- startup ------------------------------------------------------------

    def _start_tls(self, raw: socket.socket) -> None:
        p = self.params
        raw.sendall(struct.pack("!II", 8, _SSL_REQUEST))
        answer = raw.recv(1)
        if answer != b"S":
            if p.sslmode in ("disable", "prefer"):
                return
            raise ConfigurationError(
                "database_url", f"sslmode={p.sslmode} but the server does not offer TLS"
            )
        ctx = ssl.create_default_context(cafile=p.sslrootcert)
        if p.sslmode in ("prefer", "require"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif p.sslmode == "verify-ca":
            ctx.check_hostname = False
        self._sock = ctx.wrap_socket(raw, server_hostname=p.host)

    def _startup(self, replication: bool) -> None:
        p = self.params
        params = {
            "user": p.user,
            "database": p.database,
            "client_encoding": "UTF8",
            "application_name": p.application_name,
        }
        if replication:
            params["replication"] = "database"
        body = struct.pack("!I", _PROTOCOL_3)
        body += b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
        self._sock.sendall(struct.pack("!I", len(body) + 4) + body)
        scram: _Scram | None = None
        while True:
            kind, msg = self.read_message()
            if kind == b"R":
                code = struct.unpack_from("!I", msg)[0]
                if code == 0:
                    continue
                if code == 3:
                    self._sock.sendall(_message(b"p", _cstr(p.password)))
                elif code == 5:
                    inner = hashlib.md5((p.password + p.user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + msg[4:8]).hexdigest()
                    self._sock.sendall(_message(b"p", _cstr("md5" + outer)))
                elif code == 10:
                    mechanisms = msg[4:].split(b"\0")
                    if b"SCRAM-SHA-256" not in mechanisms:
                        raise ConfigurationError(
                            "database_url", f"no supported SASL mechanism in {mechanisms}"
                        )
                    scram = _Scram(p.password)
                    first = scram.client_first()
                    body = _cstr("SCRAM-SHA-256") + struct.pack("!I", len(first)) + first
                    self._sock.sendall(_message(b"p", body))
                elif code == 11 and scram is not None:
                    self._sock.sendall(_message(b"p", scram.client_final(msg[4:])))
                elif code == 12 and scram is not None:
                    scram.verify_server(msg[4:])
                else:
                    raise ConfigurationError(
                        "database_url", f"the server asks for an unsupported login (code {code})"
                    )
            elif kind == b"S":
                key, _, rest = msg.partition(b"\0")
                self.parameters[key.decode()] = rest.rstrip(b"\0").decode(errors="replace")
            elif kind == b"E":
                raise error_of(msg)
            elif kind == b"Z":
                return

    # -- messages -----------------------------------------------------------

    def _fill(self, need: int) -> None:
        while len(self._buf) < need:
            data = self._sock.recv(RECV_BYTES)
            if not data:
                raise ConnectionResetError("PostgreSQL closed the connection")
            self._buf += data

    def read_message(self) -> tuple[bytes, bytes]:
        """The next whole message: ``(type byte, body)`` (for the query phase)."""
        self._fill(5)
        length = struct.unpack_from("!I", self._buf, 1)[0]
        self._fill(1 + length)
        kind, body = self._buf[:1], self._buf[5 : 1 + length]
        self._buf = self._buf[1 + length :]
        return kind, body

    def query(self, sql: str) -> list[tuple[str | None, ...]]:
        """Run ``sql`` (simple query protocol); the rows of its last result, as text."""
        self._sock.sendall(_message(b"Q", _cstr(sql)))
        rows: list[tuple[str | None, ...]] = []
        error: PgServerError | None = None
        while True:
            kind, msg = self.read_message()
            if kind == b"T":
                rows = []
            elif kind == b"D":
                rows.append(_data_row(msg))
            elif kind == b"E":
                error = error_of(msg)
            elif kind == b"Z":
                if error is not None:
                    raise error
                return rows

    def start_replication(self, slot: str, lsn: int, options: dict[str, str]) -> None:
        """``START_REPLICATION SLOT slot LOGICAL lsn (options)``; then read with :meth:`recv`."""
        opts = ", ".join(f"{quote_ident(k)} {quote_literal(v)}" for k, v in options.items())
        sql = f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {format_lsn(lsn)} ({opts})"
        self._sock.sendall(_message(b"Q", _cstr(sql)))
        while True:
            kind, msg = self.read_message()
            if kind == b"W":
                return
            if kind == b"E":
                raise error_of(msg)

    def recv(self) -> bytes:
        """Bytes of the stream: what the query phase left buffered, else one socket read."""
        if self._buf:
            data, self._buf = self._buf, b""
            return data
        data = self._sock.recv(RECV_BYTES)
        if not data:
            raise ConnectionResetError("PostgreSQL closed the replication connection")
        return data

    def send_status(self, lsn: int, now_us: int, *, reply: bool = False) -> None:
        """A standby status update reporting ``lsn`` as written, flushed and applied.

        The flushed LSN becomes the slot's ``confirmed_flush_lsn``: the caller
        passes only what every event before it has been acknowledged for.
        """
        body = b"r" + struct.pack("!QQQqB", lsn, lsn, lsn, now_us, 1 if reply else 0)
        self._sock.sendall(_message(b"d", body))

    def settimeout(self, seconds: float | None) -> None:
        """The socket's read timeout."""
        self._sock.settimeout(seconds)

    def shutdown(self) -> None:
        """Wake a thread blocked in :meth:`recv` (safe from another thread)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the connection (sends Terminate when it can)."""
        with contextlib.suppress(OSError):
            self._sock.sendall(_message(b"X", b""))
        with contextlib.suppress(OSError):
            self._sock.close()


def _data_row(msg: bytes) -> tuple[str | None, ...]:
    (n,) = struct.unpack_from("!H", msg)
    pos = 2
    out: list[str | None] = []
    for _ in range(n):
        (length,) = struct.unpack_from("!i", msg, pos)
        pos += 4
        if length < 0:
            out.append(None)
        else:
            out.append(msg[pos : pos + length].decode())
            pos += length
    return tuple(out)


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL writes it: ``XXXXXXXX/XXXXXXXX`` (hex halves)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Inverse of :func:`format_lsn`. Raises ``ValueError`` for anything else."""
    high, slash, low = text.partition("/")
    if not slash or not high or not low:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


class _Scram:
    """SCRAM-SHA-256 (RFC 7677) as PostgreSQL runs it: the user name is the startup one."""

    def __init__(self, password: str) -> None:
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.auth_message = b""
        self.salted = b""

    def client_first(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
        if not attrs["r"].startswith(self.nonce):
            raise ConfigurationError("database_url", "SCRAM: the server's nonce is not ours")
        salt, rounds = base64.b64decode(attrs["s"]), int(attrs["i"])
        self.salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, rounds)
        client_key = hmac.digest(self.salted, b"Client Key", "sha256")
        stored = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        self.auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored, self.auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server(self, server_final: bytes) -> None:
        server_key = hmac.digest(self.salted, b"Server Key", "sha256")
        expected = hmac.digest(server_key, self.auth_message, "sha256")
        text = server_final.decode()
        if not text.startswith("v=") or not hmac.compare_digest(
            base64.b64decode(text[2:]), expected
        ):
            raise ConfigurationError("database_url", "SCRAM: the server's signature is wrong")
