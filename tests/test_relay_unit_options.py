"""The relay's settings loader: the nested ``kafka`` connection is flattened into
``kafka_*`` flags and variables, and renamed settings fail loudly (no servers)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from transactional_outbox import ConfigurationError, KafkaConnection
from transactional_outbox.relay.__main__ import main
from transactional_outbox.relay.config import RENAMED, RelaySettings, build_parser
from transactional_outbox.relay.options import flat_fields

CONN_ENV = {
    "OUTBOX_MYSQL_URL": "mysql+pymysql://outbox:pw@127.0.0.1:13306/outbox",
    "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092",
    "OUTBOX_REDIS_URL": "redis://127.0.0.1:16379/0",
}
KAFKA_SETTINGS = [
    "kafka_bootstrap_servers",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
]


@pytest.fixture(autouse=True)
def _no_outbox_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OUTBOX_"):
            monkeypatch.delenv(name)


def test_the_kafka_settings_keep_their_names() -> None:
    names = [name for name, _ in flat_fields(RelaySettings)]
    assert [n for n in names if n.startswith("kafka_") and n != "kafka_acks"] == KAFKA_SETTINGS
    assert "kafka" not in names
    text = build_parser().format_help()
    for name in KAFKA_SETTINGS:
        assert "--" + name.replace("_", "-") in text
        assert "OUTBOX_" + name.upper() in " ".join(text.split())


def test_flags_and_variables_build_the_connection() -> None:
    s = RelaySettings.from_cli(
        ["--kafka-sasl-username", "cli-user", "--kafka-bootstrap-servers", "cli:9092"],
        {
            **CONN_ENV,
            "OUTBOX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "OUTBOX_KAFKA_SASL_USERNAME": "env-user",
            "OUTBOX_KAFKA_SASL_PASSWORD": "pw",
        },
    )
    assert s.kafka == KafkaConnection(
        bootstrap_servers="cli:9092",
        security_protocol="SASL_PLAINTEXT",
        sasl_username="cli-user",  # the flag wins
        sasl_password="pw",
    )


def test_overrides_take_a_connection_or_its_flat_settings() -> None:
    given = KafkaConnection(bootstrap_servers="code:9092")
    assert RelaySettings.from_env(CONN_ENV, kafka=given).kafka is given
    s = RelaySettings.from_env(CONN_ENV, kafka=given, kafka_sasl_mechanism="SCRAM-SHA-256")
    assert s.kafka == KafkaConnection(bootstrap_servers="code:9092", sasl_mechanism="SCRAM-SHA-256")


def test_in_code_the_connection_is_required_and_typed() -> None:
    base = {k.removeprefix("OUTBOX_").lower(): v for k, v in CONN_ENV.items()}
    del base["kafka_bootstrap_servers"]
    with pytest.raises(ConfigurationError) as info:
        RelaySettings(**base)
    assert info.value.setting == "kafka_bootstrap_servers"
    with pytest.raises(ConfigurationError) as info:
        RelaySettings(**base, kafka="k:9092")  # type: ignore[arg-type]
    assert info.value.setting == "kafka"


def test_a_connection_setting_without_the_servers_names_them() -> None:
    environ = {k: v for k, v in CONN_ENV.items() if "KAFKA" not in k}
    with pytest.raises(ConfigurationError) as info:
        RelaySettings.from_env({**environ, "OUTBOX_KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert info.value.setting == "kafka_bootstrap_servers"
    assert "OUTBOX_KAFKA_BOOTSTRAP_SERVERS" in str(info.value)


def test_a_bad_connection_flag_names_the_flat_setting() -> None:
    with pytest.raises(ConfigurationError) as info:
        RelaySettings.from_cli(["--kafka-security-protocol", "TLS"], CONN_ENV)
    assert info.value.setting == "kafka_security_protocol"
    assert "--kafka-security-protocol='TLS'" in str(info.value)


def test_a_secret_connection_setting_stays_secret(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {
        **CONN_ENV,
        "OUTBOX_KAFKA_SASL_PASSWORD": "S3cretPw",
        "OUTBOX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    }
    with pytest.raises(ConfigurationError) as info:
        RelaySettings.from_env(environ)
    assert info.value.setting == "kafka_sasl_username"
    assert "S3cretPw" not in str(info.value)
    s = RelaySettings.from_env({**environ, "OUTBOX_KAFKA_SASL_USERNAME": "u"})
    assert "S3cretPw" not in repr(s)
    assert "(default: (unset))" in " ".join(build_parser().format_help().split())


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED.items()))
def test_an_old_variable_exits_2_naming_the_new_setting(
    old: str, new: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {**CONN_ENV, f"OUTBOX_{old.upper()}": "2"}.items():
        monkeypatch.setenv(name, value)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"configuration error: {new}: OUTBOX_{old.upper()} was renamed: "
        f"set OUTBOX_{new.upper()} (milliseconds)\n"
    )


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED.items()))
@pytest.mark.parametrize("form", ["separate", "equals", "bare"])
def test_an_old_flag_exits_2_naming_the_new_flag(
    old: str,
    new: str,
    form: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in CONN_ENV.items():
        monkeypatch.setenv(name, value)
    flag = "--" + old.replace("_", "-")
    argv = {"separate": [flag, "2"], "equals": [f"{flag}=2"], "bare": [flag]}[form]
    assert main(argv) == 2
    new_flag = "--" + new.replace("_", "-")
    assert capsys.readouterr().err == (
        f"configuration error: {new}: {flag} was renamed: use {new_flag} (milliseconds)\n"
    )


def test_old_names_in_a_real_process() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    out = subprocess.run(
        [sys.executable, "-m", "transactional_outbox.relay"],
        capture_output=True,
        text=True,
        env={**env, **CONN_ENV, "OUTBOX_HEARTBEAT_SECONDS": "1"},
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr == (
        "configuration error: heartbeat_ms: OUTBOX_HEARTBEAT_SECONDS was renamed: "
        "set OUTBOX_HEARTBEAT_MS (milliseconds)\n"
    )


def test_help_names_every_placeholder_of_the_topic_template() -> None:
    """--help must say what --topic-template takes: the router fills {aggregatetype},
    {schema} and {table} (issue 29 found only {aggregatetype} named)."""
    text = " ".join(build_parser().format_help().split())
    start = text.index("--topic-template TOPIC_TEMPLATE topic of an event")
    entry = text[start : start + 200]
    for placeholder in ("{aggregatetype}", "{schema}", "{table}"):
        assert placeholder in entry, entry
