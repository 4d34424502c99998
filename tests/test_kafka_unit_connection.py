"""KafkaConnection: validation, from_env, secrecy, aiokafka arguments (no servers)."""

from __future__ import annotations

import dataclasses
import ssl

import pytest

from transactional_outbox import ConfigurationError, KafkaConnection
from transactional_outbox.consumer import KafkaConnection as FromConsumer
from transactional_outbox.relay import KafkaConnection as FromRelay

SECRET = "SaslS3cretQQQ"


def sasl(**kw: object) -> KafkaConnection:
    values: dict[str, object] = {
        "bootstrap_servers": "k:9093",
        "security_protocol": "SASL_SSL",
        "sasl_username": "billing",
        "sasl_password": SECRET,
    }
    return KafkaConnection(**{**values, **kw})  # type: ignore[arg-type]


def test_one_class_exported_everywhere() -> None:
    assert FromConsumer is KafkaConnection is FromRelay


def test_keyword_only_frozen_and_defaults() -> None:
    with pytest.raises(TypeError):
        KafkaConnection("k:9092")  # type: ignore[misc]
    c = KafkaConnection(bootstrap_servers="k:9092")
    assert (c.security_protocol, c.sasl_mechanism, c.sasl_username) == ("PLAINTEXT", "PLAIN", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.sasl_username = "x"  # type: ignore[misc]


@pytest.mark.parametrize("servers", ["a:1, b:2", " a:1,b:2 ,", ["a:1", "b:2"], ("a:1", " b:2")])
def test_bootstrap_servers_text_or_sequence(servers: object) -> None:
    c = KafkaConnection(bootstrap_servers=servers)  # type: ignore[arg-type]
    assert c.bootstrap_servers == "a:1,b:2"
    assert c.servers == ("a:1", "b:2")
    assert c.addresses == [("a", 1), ("b", 2)]
    assert c == KafkaConnection(bootstrap_servers="a:1,b:2")


def test_a_server_without_port_is_on_9092() -> None:
    assert KafkaConnection(bootstrap_servers="kafka,[::1]:9094").addresses == [
        ("kafka", 9092),
        ("::1", 9094),
    ]


@pytest.mark.parametrize(
    ("kw", "setting"),
    [
        ({"bootstrap_servers": ""}, "bootstrap_servers"),
        ({"bootstrap_servers": " , "}, "bootstrap_servers"),
        ({"bootstrap_servers": []}, "bootstrap_servers"),
        ({"bootstrap_servers": ["a:1", 7]}, "bootstrap_servers"),
        ({"bootstrap_servers": "kafka:ninety"}, "bootstrap_servers"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"security_protocol": "SASL_PLAINTEXT"}, "sasl_username"),
        ({"ssl_cafile": "/ca.pem"}, "ssl_cafile"),  # PLAINTEXT speaks no TLS
        ({"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, "ssl_keyfile"),
    ],
)
def test_invalid_values_name_the_field(kw: dict[str, object], setting: str) -> None:
    values: dict[str, object] = {"bootstrap_servers": "k:9092", **kw}
    with pytest.raises(ConfigurationError) as info:
        KafkaConnection(**values)  # type: ignore[arg-type]
    assert info.value.setting == setting
    assert str(info.value).startswith(f"{setting}: ")


def test_repr_and_errors_hide_the_password() -> None:
    c = sasl()
    for text in (repr(c), str(c), repr([c])):
        assert SECRET not in text
        assert "sasl_password='***'" in text
        assert "sasl_username='billing'" in text
    assert repr(KafkaConnection(bootstrap_servers="k:1")) == (
        "KafkaConnection(bootstrap_servers='k:1')"
    )
    with pytest.raises(ConfigurationError) as info:
        sasl(sasl_username="")
    assert SECRET not in str(info.value)


def test_client_args_plaintext() -> None:
    assert KafkaConnection(bootstrap_servers="a:1,b:2").client_args() == {
        "bootstrap_servers": ["a:1", "b:2"],
        "security_protocol": "PLAINTEXT",
    }


def test_client_args_sasl_ssl() -> None:
    args = sasl(sasl_mechanism="SCRAM-SHA-512").client_args()
    assert args["security_protocol"] == "SASL_SSL"
    assert args["sasl_mechanism"] == "SCRAM-SHA-512"
    assert args["sasl_plain_username"] == "billing"
    assert args["sasl_plain_password"] == SECRET
    ctx = args["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True


def test_client_args_sasl_plaintext_has_no_tls() -> None:
    args = sasl(security_protocol="SASL_PLAINTEXT").client_args()
    assert args["sasl_mechanism"] == "PLAIN"
    assert "ssl_context" not in args


def test_client_args_ssl_has_no_sasl_and_uses_a_given_context() -> None:
    ctx = ssl.create_default_context()
    c = KafkaConnection(bootstrap_servers="k:9093", security_protocol="SSL", ssl_context=ctx)
    args = c.client_args()
    assert args["ssl_context"] is ctx
    assert not any(k.startswith("sasl") for k in args)
    assert "ssl_context" not in repr(c)


def test_client_args_a_missing_ca_file_names_the_setting(tmp_path: object) -> None:
    c = KafkaConnection(
        bootstrap_servers="k:9093", security_protocol="SSL", ssl_cafile="/nonexistent/ca.pem"
    )
    with pytest.raises(ConfigurationError) as info:
        c.client_args()
    assert info.value.setting == "ssl_cafile"


def test_from_env_reads_the_relays_variables() -> None:
    c = KafkaConnection.from_env(
        {
            "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": "k1:9093,k2:9093",
            "OUTBOX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "OUTBOX_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "OUTBOX_KAFKA_SASL_USERNAME": "billing",
            "OUTBOX_KAFKA_SASL_PASSWORD": SECRET,
            "OUTBOX_KAFKA_SSL_CAFILE": "/etc/ca.pem",
            "OUTBOX_KAFKA_SSL_CERTFILE": "/etc/c.pem",
            "OUTBOX_KAFKA_SSL_KEYFILE": "/etc/k.pem",
            "OUTBOX_KAFKA_ACKS": "1",  # the relay's producer setting: not a connection field
        }
    )
    assert c == KafkaConnection(
        bootstrap_servers="k1:9093,k2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="billing",
        sasl_password=SECRET,
        ssl_cafile="/etc/ca.pem",
        ssl_certfile="/etc/c.pem",
        ssl_keyfile="/etc/k.pem",
    )


def test_from_env_defaults_to_os_environ_and_takes_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTBOX_KAFKA_BOOTSTRAP_SERVERS", "from-os:9092")
    assert KafkaConnection.from_env().servers == ("from-os:9092",)
    assert KafkaConnection.from_env(bootstrap_servers="kw:1").servers == ("kw:1",)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({}, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS"),
        ({"OUTBOX_KAFKA_BOOTSTRAP_SERVERS": "k:x"}, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS"),
        (
            {"OUTBOX_KAFKA_BOOTSTRAP_SERVERS": "k:1", "OUTBOX_KAFKA_SECURITY_PROTOCOL": "TLS"},
            "OUTBOX_KAFKA_SECURITY_PROTOCOL",
        ),
        (
            {"OUTBOX_KAFKA_BOOTSTRAP_SERVERS": "k:1", "OUTBOX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "OUTBOX_KAFKA_SASL_USERNAME",
        ),
    ],
)
def test_from_env_errors_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        KafkaConnection.from_env(environ)
    assert info.value.setting == variable
