"""A plain install (no extra) imports the write side and explains the relay (issue 24, row 1).

Simulated in this interpreter's subprocess by hiding the modules the extras bring
(``greenlet`` of ``async``; ``pymysql``/``aiokafka``/``redis``/``prometheus_client`` of
``relay``): an import of any of them fails as on a plain install. The real thing, a
fresh virtualenv with the built wheel, is tests/test_wheel_install.py.
"""

from __future__ import annotations

import subprocess
import sys

HIDE = """
import sys
for name in {hidden!r}:
    sys.modules[name] = None  # import name -> ImportError, as if not installed
"""

EXTRAS = ("greenlet", "asyncmy", "pymysql", "aiokafka", "redis", "prometheus_client")


def run(code: str, hidden: tuple[str, ...] = EXTRAS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HIDE.format(hidden=hidden) + code],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_outbox_session_works_without_greenlet() -> None:
    out = run(
        """
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from transactional_outbox import OutboxSession, enable_outbox, outbox_table
engine = sa.create_engine("sqlite://")
outbox_table(sa.MetaData()).create(engine)
for Session in (
    sessionmaker(engine, class_=OutboxSession, outbox_keep_rows=True),
    enable_outbox(sessionmaker(engine), keep_rows=True),
):
    with Session.begin() as session:
        session.add_event(aggregate_type="o", aggregate_id=1, event_type="X", payload={})
with engine.connect() as conn:
    print(conn.execute(sa.text("SELECT COUNT(*) FROM outbox")).scalar())
"""
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"


def test_enable_outbox_refuses_a_non_factory_without_greenlet() -> None:
    out = run(
        """
from transactional_outbox import ConfigurationError, enable_outbox
try:
    enable_outbox(object())
except ConfigurationError as exc:
    print(exc)
"""
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("factory: must be a sessionmaker or async_sessionmaker")


def test_async_outbox_session_needs_the_async_extra_only_when_used() -> None:
    out = run("from transactional_outbox import AsyncOutboxSession")
    assert out.returncode != 0
    assert "greenlet" in out.stderr
    ok = run("from transactional_outbox import AsyncOutboxSession", hidden=())
    assert ok.returncode == 0, ok.stderr


def test_relay_help_without_the_relay_extra_is_one_line_and_exit_2() -> None:
    out = run(
        """
sys.argv = ["outbox-relay", "--help"]
from transactional_outbox.relay.__main__ import main
sys.exit(main())
"""
    )
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text
    [line] = text.strip().splitlines()
    assert line.startswith("configuration error: the relay needs the 'relay' extra (")
    assert line.endswith("pip install 'transactional-outbox[relay]'")


def test_the_relay_extra_brings_cryptography_for_mysql_8_logins() -> None:
    # PyMySQL's RSA exchange for caching_sha2_password without TLS needs cryptography.
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    relay = pyproject["project"]["optional-dependencies"]["relay"]
    assert any(dep.startswith("PyMySQL[rsa]") for dep in relay), relay
