"""Which server errors are misconfiguration (no servers: the classification only; the
real servers' answers are in test_relay_clear_errors.py)."""

from __future__ import annotations

import ssl
from typing import Any

import pymysql
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError

from transactional_outbox.relay.config import RelaySettings
from transactional_outbox.relay.faults import (
    kafka_misconfiguration,
    mysql_misconfiguration,
    redis_misconfiguration,
)

CONN = {
    "database_url": "mysql+pymysql://outbox:pw@127.0.0.1:13306/outbox",
    "kafka_bootstrap_servers": "127.0.0.1:19092",
    "redis_url": "redis://127.0.0.1:16379/0",
}


def settings(**kw: Any) -> RelaySettings:
    return RelaySettings.from_env({}, **{**CONN, **kw})


@pytest.mark.parametrize(
    ("code", "setting"),
    [
        (1045, "database_url"),
        (1130, "database_url"),
        (1049, "database_url"),
        (1044, "database_url"),
    ],
)
def test_mysql_refusals_are_misconfiguration(code: int, setting: str) -> None:
    found = mysql_misconfiguration(pymysql.err.OperationalError(code, "the reason"), settings())
    assert found is not None and found.setting == setting and "the reason" in str(found)


def test_an_unknown_outbox_schema_names_outbox_schema() -> None:
    exc = pymysql.err.OperationalError(1049, "Unknown database 'x'")
    found = mysql_misconfiguration(exc, settings(outbox_schema="x"))
    assert found is not None and found.setting == "outbox_schema"


@pytest.mark.parametrize("code", [2003, 2006, 2013])
def test_mysql_unreachable_is_not(code: int) -> None:
    exc = pymysql.err.OperationalError(code, "Can't connect")
    assert mysql_misconfiguration(exc, settings()) is None


def test_redis_classification() -> None:
    auth = redis_misconfiguration(AuthenticationError("invalid username-password pair"))
    assert auth is not None and auth.setting == "redis_url"
    db = redis_misconfiguration(ResponseError("DB index is out of range"))
    assert db is not None and db.setting == "redis_url"
    assert redis_misconfiguration(ConnectionError("Connection refused")) is None
    assert redis_misconfiguration(ResponseError("LOADING Redis is loading")) is None


def test_kafka_sasl_classification_as_apache_kafka_answers() -> None:
    s = settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="relay")
    refused = kafka_misconfiguration(
        SaslAuthenticationFailed("Authentication failed during authentication"), s.kafka
    )
    assert refused is not None and refused.setting == "kafka_sasl_username"
    assert "Authentication failed during authentication" in str(refused)
    mechanism = kafka_misconfiguration(UnsupportedSaslMechanismError("enabled: PLAIN"), s.kafka)
    assert mechanism is not None and mechanism.setting == "kafka_sasl_mechanism"
    assert kafka_misconfiguration(KafkaConnectionError("closed"), s.kafka) is None
    assert kafka_misconfiguration(ConnectionRefusedError(111, "refused"), s.kafka) is None


def test_kafka_tls_classification() -> None:
    s = settings(kafka_security_protocol="SSL")
    bad = ssl.SSLCertVerificationError(1, "certificate verify failed")
    found = kafka_misconfiguration(bad, s.kafka)
    assert found is not None and found.setting == "kafka_ssl_cafile"
    assert kafka_misconfiguration(ssl.SSLEOFError(8, "EOF"), s.kafka) is None  # a cut: retried
    # Without SASL, an authentication-looking error is left to the producer.
    assert kafka_misconfiguration(KeyError("v"), settings().kafka) is None
