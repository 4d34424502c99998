"""Which server errors are misconfiguration (exit 2, naming the setting) and which pass.

A wrong password, an unknown database, a Redis db index out of range, a refused
SASL login or a broker certificate that does not verify will fail the same way
on every retry: the relay stops at once with one line naming the setting and the
server's own reason. Unreachable servers are not classified here: the relay
keeps retrying them with backoff.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pymysql
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    ConcurrentTransactions,
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    IllegalSaslStateError,
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaError,
    NoError,
    NotCoordinatorError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.protocol.transaction import InitProducerIdRequest
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from sqlalchemy.engine import make_url

from ..exceptions import ConfigurationError
from ..kafka import KafkaConnection
from .config import RelaySettings

__all__ = [
    "check_idempotent_producer",
    "check_kafka_login",
    "kafka_misconfiguration",
    "mysql_misconfiguration",
    "redis_misconfiguration",
    "select_grants",
]

# A connection cut during the handshake may be a broker restarting: retried.
_SSL_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)

# MySQL/MariaDB error codes a retry cannot fix.
_ACCESS_DENIED = 1045  # wrong user or password
_DB_ACCESS_DENIED = 1044  # no privilege on the database
_HOST_NOT_ALLOWED = 1130
_UNKNOWN_DATABASE = 1049
_ACCOUNT_LOCKED = (3118, 4151)  # MySQL, MariaDB


def mysql_misconfiguration(
    exc: BaseException, settings: RelaySettings
) -> ConfigurationError | None:
    """The configuration error ``exc`` means, or None if it may be transient."""
    if not isinstance(exc, pymysql.err.OperationalError | pymysql.err.InternalError):
        return None
    code = exc.args[0] if exc.args else None
    reason = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    if code in (_ACCESS_DENIED, _HOST_NOT_ALLOWED, *_ACCOUNT_LOCKED):
        return ConfigurationError(
            "database_url", f"the server refused the login (error {code}): {reason}"
        )
    if code in (_UNKNOWN_DATABASE, _DB_ACCESS_DENIED):
        setting = (
            "outbox_tables"
            if settings.outbox_tables
            else "outbox_schema"
            if settings.outbox_schema
            else "database_url"
        )
        if code == _DB_ACCESS_DENIED:
            # No privilege at all on the outbox table's schema: the relay's one
            # grant there is SELECT on its outbox table(s) (docs/relay.md, least privilege).
            reason += f"; {select_grants(settings)}"
        return ConfigurationError(setting, f"error {code} from the server: {reason}")
    return None


def select_grants(settings: RelaySettings) -> str:
    """The GRANT statement(s) giving the relay's user SELECT on its outbox table(s)."""
    user = make_url(settings.database_url).username or "<relay user>"
    statements = [
        f"GRANT SELECT ON `{schema}`.`{table}` TO '{user}'@'%';"
        for schema, table in settings.tables
    ]
    return "the relay's user needs SELECT on the outbox table: " + " ".join(statements)


def redis_misconfiguration(exc: BaseException) -> ConfigurationError | None:
    """The configuration error a Redis error means, or None if it may be transient."""
    cause: BaseException | None = exc
    for _ in range(5):  # redis-py raises its ConnectionError inside the ssl error's except
        if isinstance(cause, ssl.SSLCertVerificationError):
            return ConfigurationError(
                "redis_url",
                "Redis's TLS certificate does not verify (name its CA with ssl_ca_certs= in "
                f"the URL): {cause.verify_message or cause}",
            )
        cause = None if cause is None else cause.__cause__ or cause.__context__
    if isinstance(exc, AuthenticationError | NoPermissionError):
        return ConfigurationError("redis_url", f"Redis refused the login: {exc}")
    if isinstance(exc, ResponseError):
        text = str(exc)
        if "DB index" in text or text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            return ConfigurationError("redis_url", f"Redis refused it: {text}")
    return None


def kafka_misconfiguration(exc: BaseException, s: KafkaConnection) -> ConfigurationError | None:
    """The configuration error a Kafka login error means, or None if it may be transient.

    The settings named are the relay's (``kafka_*``: ``OUTBOX_KAFKA_*``, ``--kafka-*``).
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        where = s.ssl_cafile or "the system's CA bundle"
        return ConfigurationError(
            "kafka_ssl_cafile",
            f"the broker's TLS certificate does not verify against {where}: "
            f"{getattr(exc, 'verify_message', None) or getattr(exc, 'reason', None) or exc}",
        )
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, _SSL_TRANSIENT):
        return ConfigurationError(
            "kafka_security_protocol",
            f"TLS with the broker failed ({getattr(exc, 'reason', None) or exc}); is "
            f"{s.security_protocol} what its listener speaks?",
        )
    if not s.security_protocol.startswith("SASL"):
        return None
    if isinstance(exc, UnsupportedSaslMechanismError):
        return ConfigurationError("kafka_sasl_mechanism", str(exc))
    if isinstance(exc, SaslAuthenticationFailed | AuthenticationFailedError):
        reason = str(exc)
    elif isinstance(exc, IllegalSaslStateError) or not isinstance(
        exc, KafkaError | OSError | asyncio.TimeoutError
    ):
        # aiokafka's SCRAM client fails to parse a server-final message that
        # carries an error (e=...) instead of a signature: a refused login too.
        reason = f"the broker ended the SASL exchange without accepting it ({type(exc).__name__})"
    else:
        return None
    return ConfigurationError(
        "kafka_sasl_username",
        f"the broker refused SASL {s.sasl_mechanism} authentication of user "
        f"{s.sasl_username!r} (check kafka_sasl_username/kafka_sasl_password): {reason}",
    )


async def check_kafka_login(settings: RelaySettings, producer_args: dict[str, Any]) -> None:
    """Open one connection to a bootstrap broker, as the producer would (TLS, SASL).

    Raises :class:`ConfigurationError` when the broker refuses the login or its
    certificate; returns quietly otherwise, also when no broker answers (the
    producer then retries, as for any outage). aiokafka's own bootstrap logs
    such failures and moves on, which would retry a wrong password forever.
    """
    timeout_ms = min(settings.request_timeout_ms, 10_000)
    kafka = settings.kafka
    for host, port in kafka.addresses:
        try:
            conn = await create_conn(
                host,
                port,
                client_id=str(producer_args.get("client_id", "outbox-relay")),
                request_timeout_ms=timeout_ms,
                ssl_context=producer_args.get("ssl_context"),
                security_protocol=kafka.security_protocol,
                sasl_mechanism=kafka.sasl_mechanism,
                sasl_plain_username=kafka.sasl_username or None,
                sasl_plain_password=kafka.sasl_password or None,
            )
        except (TimeoutError, KafkaConnectionError, ConnectionError) as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                raise kafka_misconfiguration(exc.__cause__, kafka) or exc from None
            continue  # unreachable: the producer retries
        except Exception as exc:
            found = kafka_misconfiguration(exc, kafka)
            if found is not None:
                raise found from None
            continue
        try:
            if producer_args.get("enable_idempotence"):
                await check_idempotent_producer(conn)
        finally:
            conn.close()
        return


# InitProducerId answers a retry can fix: the broker is still loading or moving
# its coordinator. aiokafka's producer retries these itself.
_PID_RETRIABLE = (
    NoError,
    CoordinatorNotAvailableError,
    CoordinatorLoadInProgressError,
    NotCoordinatorError,
    ConcurrentTransactions,
)


async def check_idempotent_producer(conn: Any) -> None:
    """Ask the broker on ``conn`` for a producer id, as the idempotent producer will.

    Raises :class:`ConfigurationError` naming ``enable_idempotence`` when the
    broker answers with an error a retry cannot fix, or does not know the request
    at all: aiokafka's producer would log ``Unexpected error during
    InitProducerIdRequest`` and retry forever without publishing anything (the
    local tansu broker answers ``UnknownError``). A broker that does not answer
    is left to the producer's own retries. On Apache Kafka this allocates one
    unused producer id, as every producer start does.
    """
    try:
        resp = await conn.send(
            InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000)
        )
    except IncompatibleBrokerVersion:
        reason = "the broker does not support InitProducerIdRequest"
    except (KafkaError, OSError, TimeoutError):
        return
    else:
        error = for_code(resp.error_code)
        if error in _PID_RETRIABLE:
            return
        reason = f"InitProducerIdRequest failed: {error.__name__}"
    raise ConfigurationError(
        "enable_idempotence",
        f"the broker cannot give the idempotent producer an id ({reason}); for a broker "
        "without idempotence set OUTBOX_ENABLE_IDEMPOTENCE=false (--no-enable-idempotence)",
    )
