"""RelaySettings: defaults, environment, flags, help, secrets (no servers)."""

from __future__ import annotations

import dataclasses
import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from transactional_outbox import KafkaConnection
from transactional_outbox._fields import mask_url
from transactional_outbox.exceptions import ConfigurationError
from transactional_outbox.relay.__main__ import main
from transactional_outbox.relay.config import RelaySettings, build_parser, env_var
from transactional_outbox.relay.mysql.startup import derive_server_id
from transactional_outbox.relay.options import SECRET, convert, flat_fields, option
from transactional_outbox.relay.position import StartPolicy

MYSQL_SECRET = "Hunter2#MyS/ql?Pw"  # characters urlsplit misreads as fragment/path/query
REDIS_SECRET = "R3disS3cretXYZ"
SASL_SECRET = "SaslS3cretQQQ"
MYSQL_URL = f"mysql+pymysql://outbox:{MYSQL_SECRET}@db.example:3307/shop"
REDIS_URL = f"redis://default:{REDIS_SECRET}@cache.example:6380/2"

FIELDS = [f.name for f in dataclasses.fields(RelaySettings)]
SETTINGS = [name for name, _ in flat_fields(RelaySettings)]  # kafka's fields flattened
# The connection settings have no default: every test names them.
CONN = {
    "database_url": "mysql+pymysql://outbox:pw@127.0.0.1:13306/outbox",
    "kafka_bootstrap_servers": "127.0.0.1:19092",
    "redis_url": "redis://127.0.0.1:16379/0",
}
CONN_ENV = {env_var(k): v for k, v in CONN.items()}


def settings(**kw: Any) -> RelaySettings:
    """RelaySettings with the connection settings filled in unless given (flat names,
    ``kafka_*`` included, as ``from_env`` overrides take them)."""
    return RelaySettings.from_env({}, **{**CONN, **kw})


def env(values: dict[str, str] | None = None) -> dict[str, str]:
    """An environment with the connection settings, plus ``values``."""
    return {**CONN_ENV, **(values or {})}


@pytest.fixture(autouse=True)
def _no_outbox_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OUTBOX_"):
            monkeypatch.delenv(name)


@pytest.fixture
def conn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection settings in ``os.environ``, for tests of ``main()``."""
    for name, value in CONN_ENV.items():
        monkeypatch.setenv(name, value)


def secret_settings(**kw: Any) -> RelaySettings:
    return settings(
        database_url=MYSQL_URL,
        redis_url=REDIS_URL,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="relay",
        kafka_sasl_password=SASL_SECRET,
        **kw,
    )


# -- defaults and derived values ----------------------------------------------------------


def test_defaults() -> None:
    s = settings()
    assert s.schema == "outbox"
    assert s.outbox_table == "outbox"
    assert s.kafka_acks == "all"
    assert s.enable_idempotence is True
    assert s.server_id == 0
    assert s.create_topics is True
    assert (s.topic_partitions, s.topic_replication_factor) == (-1, -1)
    assert s.topic_template == "outbox.event.{aggregatetype}"
    assert s.topic_overrides == {}
    assert s.start_position == "latest"
    assert s.start_policy() == StartPolicy("latest")
    assert s.ignore_checkpoint is False
    assert s.queue_max_events == 20_000
    assert s.heartbeat_ms == 2_000
    assert s.reconnect_max_ms == 30_000
    assert s.progress_interval_ms == 10_000
    assert s.kafka == KafkaConnection(bootstrap_servers="127.0.0.1:19092")
    assert s.router().topic("order") == "outbox.event.order"


@pytest.mark.parametrize("name", ["database_url", "kafka_bootstrap_servers", "redis_url"])
def test_connection_settings_have_no_default(name: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        in_code = {k: v for k, v in CONN.items() if k != name}
        kafka = in_code.pop("kafka_bootstrap_servers", None)
        RelaySettings(**in_code, kafka=kafka and KafkaConnection(bootstrap_servers=kafka))
    assert info.value.setting == name
    assert env_var(name) in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        RelaySettings.from_env({k: v for k, v in CONN_ENV.items() if k != env_var(name)})
    assert info.value.setting == name


@pytest.mark.parametrize("name", ["database_url", "kafka_bootstrap_servers", "redis_url"])
def test_main_without_a_connection_setting_exits_2_naming_the_variable(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var, value in CONN_ENV.items():
        if var != env_var(name):
            monkeypatch.setenv(var, value)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"configuration error: {name}: not set: set {env_var(name)}" in err


@pytest.mark.parametrize(
    ("kw", "setting"),
    [
        ({"on_rejected": "deadletter"}, "on_rejected"),
        ({"reader": "proces"}, "reader"),
        ({"kafka_acks": "al"}, "kafka_acks"),
        ({"kafka_acks": 2}, "kafka_acks"),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
        ({"compression_type": "brotli"}, "compression_type"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"start_position": "newest"}, "start_position"),
        ({"topic_partitions": 0}, "topic_partitions"),
        ({"topic_replication_factor": -2}, "topic_replication_factor"),
    ],
)
def test_every_choice_is_checked_when_built_in_code(kw: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(**kw)
    assert info.value.setting == setting
    assert repr(next(iter(kw.values()))) in str(info.value) or setting == "start_position"


def test_kafka_acks_as_an_int_in_code() -> None:
    assert settings(kafka_acks=1).producer_args()["acks"] == 1


def test_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        RelaySettings("mysql+pymysql://a:b@h/db")  # type: ignore[call-arg]
    s = settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.relay_name = "x"  # type: ignore[misc]


def test_schema_from_url_or_setting() -> None:
    assert settings(database_url="mysql+pymysql://u:p@h/app").schema == "app"
    s = settings(database_url="mysql+pymysql://u:p@h/app", outbox_schema="events")
    assert s.schema == "events"
    assert settings(database_url="mysql+pymysql://u:p@h", outbox_schema="events").schema == (
        "events"
    )


def test_mysql_connection_args() -> None:
    assert settings(database_url=MYSQL_URL).mysql_connection_args() == {
        "host": "db.example",
        "port": 3307,
        "user": "outbox",
        "password": MYSQL_SECRET,
    }
    args = settings(database_url="mysql+pymysql://h/db").mysql_connection_args()
    assert args == {"host": "h", "port": 3306, "user": "", "password": ""}


def test_derived_server_ids_differ_per_start_and_stay_in_range() -> None:
    ids = {derive_server_id("billing") for _ in range(200)}
    assert len(ids) == 200  # a new id for every start, even in one process
    assert all(1 <= i <= 2**32 - 1 for i in ids)
    for name in ("a", "default", "x" * 300, "ünïcode"):
        assert 1 <= derive_server_id(name) <= 2**32 - 1


def test_derived_server_id_is_never_the_servers_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from transactional_outbox.relay.mysql import startup

    monkeypatch.setattr(startup.secrets, "token_hex", lambda n: "fixed")
    taken = derive_server_id("billing")
    assert derive_server_id("billing", avoid=taken) != taken
    assert 1 <= derive_server_id("billing", avoid=taken) <= 2**32 - 1


def test_derived_server_ids_differ_across_processes() -> None:
    code = (
        "from transactional_outbox.relay.mysql.startup import derive_server_id;"
        "print(derive_server_id('billing'))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        for _ in range(2)
    }
    assert len(outs) == 2


def test_checkpoint_key() -> None:
    assert settings().checkpoint_key == "outbox:relay:default:checkpoint"
    s = settings(key_prefix="p:", relay_name="billing")
    assert s.checkpoint_key == "p:billing:checkpoint"


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "setting"),
    [
        ({"database_url": "not a url"}, "database_url"),
        ({"database_url": "mysql+pymysql:///db"}, "database_url"),
        ({"database_url": "mysql+pymysql://u:p@h"}, "outbox_schema"),
        ({"server_id": -1}, "server_id"),
        ({"server_id": 2**32}, "server_id"),
        ({"start_position": "somewhere"}, "start_position"),
        ({"start_position": "mysql-bin.000001:3"}, "start_position"),
        ({"topic_template": "x.{nope}"}, "topic_template"),
        ({"topic_overrides": {"order": "bad topic"}}, "topic_overrides"),
        ({"checkpoint_interval_ms": 0}, "checkpoint_interval_ms"),
        ({"queue_max_events": 0}, "queue_max_events"),
        ({"max_request_size": -1}, "max_request_size"),
        ({"heartbeat_ms": 0}, "heartbeat_ms"),
        ({"reconnect_max_ms": 0}, "reconnect_max_ms"),
        ({"progress_interval_ms": -1}, "progress_interval_ms"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "kafka_sasl_username"),
        ({"kafka_bootstrap_servers": "kafka:ninety"}, "kafka_bootstrap_servers"),
        ({"kafka_bootstrap_servers": " , "}, "kafka_bootstrap_servers"),
    ],
)
def test_invalid_values_name_the_setting(kw: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(**kw)
    assert info.value.setting == setting
    assert str(info.value).startswith(f"{setting}: ")


def test_server_id_bounds_are_inclusive() -> None:
    assert settings(server_id=2**32 - 1).server_id == 2**32 - 1


@pytest.mark.parametrize(
    "url", [f"mysql+pymysql://u:{MYSQL_SECRET}@/db", f"mysql+pymysql://u:{MYSQL_SECRET}@"]
)
def test_mysql_url_errors_do_not_echo_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(database_url=url)
    assert info.value.setting == "database_url"
    assert MYSQL_SECRET not in str(info.value)
    assert "Hunter2" not in str(info.value)


# -- from_env ---------------------------------------------------------------------------------


def test_env_var_names() -> None:
    assert env_var("database_url") == "OUTBOX_DATABASE_URL"
    assert env_var("topic_overrides") == "OUTBOX_TOPIC_OVERRIDES"


def test_from_env_reads_every_kind() -> None:
    s = RelaySettings.from_env(
        {
            **CONN_ENV,
            "OUTBOX_DATABASE_URL": "mysql+pymysql://u:p@h:3310/app",
            "OUTBOX_SERVER_ID": "4242",
            "OUTBOX_ENABLE_IDEMPOTENCE": "false",
            "OUTBOX_IGNORE_CHECKPOINT": "YES",
            "OUTBOX_HEARTBEAT_MS": "500",
            "OUTBOX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "OUTBOX_KAFKA_SASL_USERNAME": "relay",
            "OUTBOX_KAFKA_SASL_PASSWORD": SASL_SECRET,
            "OUTBOX_TOPIC_OVERRIDES": "order=orders,customer=crm.customers",
            "OUTBOX_KAFKA_ACKS": "1",
            "OUTBOX_START_POSITION": "mysql-bin.000003:1234",
            "OUTBOX_RELAY_NAME": "billing",
            "OTHER_VAR": "ignored",
            "OUTBOX_UNKNOWN": "ignored",
        }
    )
    assert s.database_url == "mysql+pymysql://u:p@h:3310/app"
    assert s.server_id == 4242
    assert s.enable_idempotence is False
    assert s.ignore_checkpoint is True
    assert s.heartbeat_ms == 500
    assert s.kafka.security_protocol == "SASL_SSL"
    assert (s.kafka.sasl_username, s.kafka.sasl_password) == ("relay", SASL_SECRET)
    assert s.topic_overrides == {"order": "orders", "customer": "crm.customers"}
    assert s.router().topic("customer") == "crm.customers"
    assert s.kafka_acks == "1"
    assert s.start_policy() == StartPolicy("position", file="mysql-bin.000003", pos=1234)
    assert s.relay_name == "billing"


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_RELAY_NAME", "from-os")
    for name, value in CONN_ENV.items():
        monkeypatch.setenv(name, value)
    assert RelaySettings.from_env().relay_name == "from-os"
    assert RelaySettings.from_env(env()).relay_name == "default"


def test_from_env_keyword_overrides_win() -> None:
    s = RelaySettings.from_env(env({"OUTBOX_RELAY_NAME": "env"}), relay_name="kw")
    assert s.relay_name == "kw"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        (" on ", True),
        ("0", False),
        ("FALSE", False),
        ("no", False),
        ("off", False),
    ],
)
def test_from_env_bool(raw: str, expected: bool) -> None:
    assert (
        RelaySettings.from_env(env({"OUTBOX_IGNORE_CHECKPOINT": raw})).ignore_checkpoint is expected
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("auto", "auto"),
        (" ON ", "on"),
        ("off", "off"),
        ("true", "on"),  # resume_by_gtid was true/false before it had auto
        ("1", "on"),
        ("False", "off"),
        ("no", "off"),
    ],
)
def test_resume_by_gtid_is_auto_on_or_off_and_reads_old_booleans(raw: str, expected: str) -> None:
    assert RelaySettings.from_env(env({})).resume_by_gtid == "auto"
    assert RelaySettings.from_env(env({"OUTBOX_RESUME_BY_GTID": raw})).resume_by_gtid == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--resume-by-gtid"], "on"),
        (["--no-resume-by-gtid"], "off"),
        (["--resume-by-gtid", "auto"], "auto"),
        (["--resume-by-gtid=false"], "off"),
    ],
)
def test_resume_by_gtid_flags_keep_their_boolean_forms(argv: list[str], expected: str) -> None:
    assert RelaySettings.from_cli(argv, environ=env({})).resume_by_gtid == expected


def test_resume_by_gtid_accepts_a_python_bool_and_refuses_other_words() -> None:
    assert RelaySettings.from_env(env({}), resume_by_gtid=True).resume_by_gtid == "on"
    with pytest.raises(ConfigurationError, match="resume_by_gtid: 'sometimes' is not a choice"):
        RelaySettings.from_env(env({"OUTBOX_RESUME_BY_GTID": "sometimes"}))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("order=orders", {"order": "orders"}),
        (
            " order = orders , ,customer=crm.customers,",
            {"order": "orders", "customer": "crm.customers"},
        ),
    ],
)
def test_from_env_mapping(raw: str, expected: dict[str, str]) -> None:
    assert RelaySettings.from_env(env({"OUTBOX_TOPIC_OVERRIDES": raw})).topic_overrides == expected


@pytest.mark.parametrize(
    ("var", "raw", "setting"),
    [
        ("OUTBOX_SERVER_ID", "abc", "server_id"),
        ("OUTBOX_SERVER_ID", "1.5", "server_id"),
        ("OUTBOX_LINGER_MS", "", "linger_ms"),
        ("OUTBOX_ENABLE_IDEMPOTENCE", "maybe", "enable_idempotence"),
        ("OUTBOX_HEARTBEAT_MS", "fast", "heartbeat_ms"),
        ("OUTBOX_HEARTBEAT_MS", "0.5", "heartbeat_ms"),
        ("OUTBOX_TOPIC_OVERRIDES", "order", "topic_overrides"),
        ("OUTBOX_TOPIC_OVERRIDES", "=orders", "topic_overrides"),
        ("OUTBOX_TOPIC_OVERRIDES", "order=", "topic_overrides"),
        ("OUTBOX_LOG_LEVEL", "LOUD", "log_level"),
        ("OUTBOX_KAFKA_ACKS", "2", "kafka_acks"),
        ("OUTBOX_COMPRESSION_TYPE", "brotli", "compression_type"),
        ("OUTBOX_KAFKA_SECURITY_PROTOCOL", "plaintext", "kafka_security_protocol"),
    ],
)
def test_from_env_bad_values_name_field_variable_and_value(
    var: str, raw: str, setting: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        RelaySettings.from_env(env({var: raw}))
    assert info.value.setting == setting
    message = str(info.value)
    assert message.startswith(f"{setting}: ")
    assert f"{var}={raw!r}" in message


def test_conversion_errors_of_secret_fields_do_not_echo_the_value() -> None:
    @dataclass
    class Secretive:
        pin: int = option(0, "a secret number", secret=True)
        count: int = option(0, "a plain number")

    pin, count = dataclasses.fields(Secretive)
    with pytest.raises(ConfigurationError) as info:
        convert(pin, "not-a-number-S3CRET", "OUTBOX_PIN")
    assert info.value.setting == "pin"
    assert "S3CRET" not in str(info.value)
    assert "OUTBOX_PIN=***" in str(info.value)
    with pytest.raises(ConfigurationError, match="OUTBOX_COUNT='not-a-number'"):
        convert(count, "not-a-number", "OUTBOX_COUNT")


def test_from_env_bad_secret_urls_do_not_echo_secrets() -> None:
    with pytest.raises(ConfigurationError) as info:
        RelaySettings.from_env(
            env({"OUTBOX_DATABASE_URL": f"mysql+pymysql://u:{MYSQL_SECRET}@/db"})
        )
    assert "Hunter2" not in str(info.value)


# -- from_cli -----------------------------------------------------------------------------------


def test_from_cli_flags_override_env() -> None:
    given = env({"OUTBOX_RELAY_NAME": "env-name", "OUTBOX_LINGER_MS": "9", "OUTBOX_SERVER_ID": "5"})
    s = RelaySettings.from_cli(["--relay-name", "cli-name", "--server-id", "6"], given)
    assert s.relay_name == "cli-name"
    assert s.server_id == 6
    assert s.linger_ms == 9  # env, no flag


def test_from_cli_kinds() -> None:
    s = RelaySettings.from_cli(
        [
            "--no-enable-idempotence",
            "--ignore-checkpoint",
            "--topic-overrides",
            "order=orders",
            "--heartbeat-ms",
            "1250",
            "--kafka-bootstrap-servers",
            "k1:9092,k2:9093",
            "--log-level",
            "DEBUG",
            "--start-position",
            "gtid:0-1-42",
        ],
        env({"OUTBOX_ENABLE_IDEMPOTENCE": "true", "OUTBOX_IGNORE_CHECKPOINT": "false"}),
    )
    assert s.enable_idempotence is False
    assert s.ignore_checkpoint is True
    assert s.topic_overrides == {"order": "orders"}
    assert s.heartbeat_ms == 1250
    assert s.kafka.servers == ("k1:9092", "k2:9093")
    assert s.log_level == "DEBUG"
    assert s.start_policy() == StartPolicy("gtid", gtid="0-1-42")


def test_from_cli_without_flags_is_from_env() -> None:
    assert RelaySettings.from_cli([], env({"OUTBOX_RELAY_NAME": "x"})) == RelaySettings.from_env(
        env({"OUTBOX_RELAY_NAME": "x"})
    )


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--server-id", "abc"], "server_id"),
        (["--log-level", "LOUD"], "log_level"),
        (["--kafka-acks", "2"], "kafka_acks"),
        (["--topic-overrides", "nonsense"], "topic_overrides"),
        (["--start-position", "nowhere"], "start_position"),
    ],
)
def test_from_cli_bad_values_name_the_setting_and_the_value(argv: list[str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RelaySettings.from_cli(argv, env())
    assert info.value.setting == setting
    assert str(info.value).startswith(f"{setting}: ")
    assert repr(argv[1]) in str(info.value)  # the value given, as given


def test_help_lists_every_field_flag_env_var_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping inside a flag's help
    text = " ".join(build_parser().format_help().split())
    for name, f in flat_fields(RelaySettings):
        flag = "--" + name.replace("_", "-")
        assert flag in text
        assert f"[env {env_var(name)}]" in text
        if f.metadata.get(SECRET):  # kafka_sasl_password, canary_mysql_url
            default = "(unset)"
        elif name in (
            "topic_overrides",
            "outbox_tables",
            "pg_message_prefixes",
            "pg_other_message_prefixes",
        ):
            default = "(none)"
        elif name in CONN:
            default = "(required)"
        else:
            default = str(f.default)
        assert f"{f.metadata['help']} [env {env_var(name)}] (default: {default})" in text, name
    assert "--kafka " not in text and "OUTBOX_KAFKA " not in text  # the nested field itself
    assert "--no-enable-idempotence" in text
    assert "{DEBUG,INFO,WARNING,ERROR}" in text  # choices shown
    assert "exit codes:" in text


def test_help_in_a_subprocess_lists_exit_codes() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    out = subprocess.run(
        [sys.executable, "-m", "transactional_outbox.relay", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert text.startswith("usage: python -m transactional_outbox.relay")
    for code in ("0 stopped cleanly", "1 unexpected error", "2 invalid setting", "3 checkpoint"):
        assert code in text
    assert "4 an event was rejected by Kafka" in text
    for name in SETTINGS:
        assert "--" + name.replace("_", "-") in text
    assert "seconds" not in text  # durations are milliseconds; old flags are hidden


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--server-id", "abc"], "server_id"),
        (["--log-level", "LOUD"], "log_level"),
        (["--queue-max-events", "0"], "queue_max_events"),
        (["--start-position", "mysql-bin.000001:2"], "start_position"),
    ],
)
def test_main_returns_2_on_invalid_flag(
    argv: list[str], setting: str, capsys: pytest.CaptureFixture[str], conn_env: None
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"configuration error: {setting}: " in err


def test_main_invalid_env_returns_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OUTBOX_HEARTBEAT_MS", "soon")
    assert main([]) == 2
    assert "heartbeat_ms: OUTBOX_HEARTBEAT_MS='soon'" in capsys.readouterr().err


def test_main_error_does_not_echo_the_mysql_password(
    capsys: pytest.CaptureFixture[str], conn_env: None
) -> None:
    assert main(["--mysql-url", f"mysql+pymysql://u:{MYSQL_SECRET}@/db"]) == 2
    err = capsys.readouterr().err
    assert "database_url" in err
    assert "Hunter2" not in err


# -- secrets in repr/str ------------------------------------------------------------------------


def test_repr_and_str_hide_every_secret() -> None:
    s = secret_settings()
    for text in (repr(s), str(s), f"{s}", f"{s!r}", repr([s])):
        assert "Hunter2" not in text
        assert "MyS/ql" not in text
        assert REDIS_SECRET not in text
        assert SASL_SECRET not in text
        assert "database_url='mysql+pymysql://outbox:***@db.example:3307/shop'" in text
        assert "redis_url='redis://default:***@cache.example:6380/2'" in text
        assert "sasl_password='***'" in text
        assert "sasl_username='relay'" in text


def test_repr_lists_every_field() -> None:
    text = repr(settings())
    assert text.startswith("RelaySettings(")
    for name in FIELDS:
        assert f"{name}=" in text
    assert "kafka=KafkaConnection(bootstrap_servers='127.0.0.1:19092')" in text


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
        ("mysql+pymysql://u:p@h/db?charset=utf8mb4", "mysql+pymysql://u:***@h/db?charset=utf8mb4"),
        (MYSQL_URL, "mysql+pymysql://outbox:***@db.example:3307/shop"),
        ("mysql+pymysql://u:p@ss@h/db", "mysql+pymysql://u:***@h/db"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
        ("redis://h/0?client_name=a@b", "redis://h/0?client_name=a@b"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# -- producer arguments --------------------------------------------------------------------------


def test_producer_args_plaintext() -> None:
    args = settings(relay_name="billing").producer_args()
    assert args == {
        "bootstrap_servers": ["127.0.0.1:19092"],
        "client_id": "outbox-relay-billing",
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None,
        "linger_ms": 5,
        "max_batch_size": 262_144,
        "max_request_size": 1_048_576,
        "request_timeout_ms": 40_000,
        "retry_backoff_ms": 500,
        "security_protocol": "PLAINTEXT",
    }


def test_producer_args_acks_and_compression() -> None:
    args = settings(kafka_acks="1", compression_type="zstd").producer_args()
    assert args["acks"] == 1
    assert args["compression_type"] == "zstd"
    assert settings(kafka_acks="0").producer_args()["acks"] == 0


def test_producer_args_sasl_ssl() -> None:
    s = secret_settings(kafka_sasl_mechanism="SCRAM-SHA-512")
    args = s.producer_args()
    assert args["security_protocol"] == "SASL_SSL"
    assert args["sasl_mechanism"] == "SCRAM-SHA-512"
    assert args["sasl_plain_username"] == "relay"
    assert args["sasl_plain_password"] == SASL_SECRET
    ctx = args["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True


def test_producer_args_sasl_plaintext_has_no_ssl() -> None:
    s = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u")
    args = s.producer_args()
    assert args["sasl_mechanism"] == "PLAIN"
    assert args["sasl_plain_username"] == "u"
    assert args["sasl_plain_password"] == ""
    assert "ssl_context" not in args


def test_producer_args_ssl_has_no_sasl() -> None:
    args = settings(kafka_security_protocol="SSL").producer_args()
    assert isinstance(args["ssl_context"], ssl.SSLContext)
    assert not any(k.startswith("sasl") for k in args)
