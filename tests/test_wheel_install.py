"""The built wheel, installed in a fresh virtualenv, works for each role (issue 24).

Not the editable checkout: the wheel is built once from a copy of the sources, then
one virtualenv gets, step by step, each ``pip install`` line of README "Install"
(the ``wheel-install`` block), with the package name replaced by the wheel's path:

1. plain: ``from transactional_outbox import OutboxSession`` writes an event on SQLite
   without greenlet (SQLAlchemy 2.1 no longer installs it), the alembic revisions are
   in the wheel, and ``outbox-relay --help`` exits 2 naming the ``relay`` extra;
2. ``[async]``: ``AsyncOutboxSession`` imports;
3. ``[relay]``: ``outbox-relay --help`` works and ``cryptography`` is there (MySQL 8's
   ``caching_sha2_password`` login without TLS needs it in PyMySQL);
4. ``[consumer]``: the consumer's runner and stores import;
5. ``[otel]``: OpenTelemetry's API is there for the relay's ``trace_publish``;
6. ``[faststream]``: ``exactly_once`` decorates a FastStream Kafka subscriber.

Needs only Python's ``venv`` and pip's index (PyPI), as a clean CI machine has.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from . import _readme
from .conftest import ROOT

COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".stack", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "bench"
)


def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload, no-any-return]


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"{out.args}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "transactional-outbox"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
    dist = tmp_path_factory.mktemp("dist")
    ok(run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)]))
    [built] = dist.glob("transactional_outbox-*.whl")
    return built


def install_lines() -> list[tuple[str, str]]:
    """(extra, comment) per ``pip install`` line of README "Install"."""
    [block] = _readme.of_kind("wheel-install")
    out = []
    for line in block.code.splitlines():
        words = shlex.split(line.split("#")[0])
        assert words[:2] == ["pip", "install"], line
        m = re.fullmatch(r"transactional-outbox(?:\[(?P<extra>[\w,]+)\])?", words[2])
        assert m, line
        out.append((m["extra"] or "", line))
    return out


PLAIN = """
import importlib.util, sys
assert importlib.util.find_spec("greenlet") is None, "greenlet is installed"
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from transactional_outbox import OutboxSession, outbox_table
from transactional_outbox.testing import capture_events, to_record
engine = sa.create_engine("sqlite://")
outbox_table(sa.MetaData()).create(engine)
Session = sessionmaker(engine, class_=OutboxSession, outbox_keep_rows=True)
with capture_events() as captured, Session.begin() as session:
    session.add_event(aggregate_type="order", aggregate_id=1, event_type="Placed", payload={})
[record] = captured.records()
assert record.topic == "outbox.event.order", record
assert "sqlalchemy.ext.asyncio" not in sys.modules
from importlib.resources import files
names = {p.name for p in files("transactional_outbox").joinpath("migrations/versions").iterdir()}
assert {"outbox_0001_create_outbox_table.py", "outbox_0002_inbox.py"} <= names, names
print("plain ok")
"""

ASYNC = """
from transactional_outbox import AsyncOutboxSession
import asyncmy
print("async ok")
"""

RELAY = """
import cryptography, pymysql, aiokafka, redis, prometheus_client
print("relay ok")
"""

CONSUMER = """
from transactional_outbox.consumer import AsyncRedisStore, ConsumerRunner, RunnerSettings
from transactional_outbox.testing import InMemoryStore, to_received
print("consumer ok")
"""

OTEL = """
from opentelemetry import trace
from transactional_outbox.relay.tracing import publish_tracer
publish_tracer()  # without OpenTelemetry: ConfigurationError naming trace_publish
print("otel ok")
"""

FASTSTREAM = """
from faststream.kafka import KafkaBroker
from transactional_outbox.consumer import AsyncInMemoryStore
from transactional_outbox.faststream import exactly_once
broker = KafkaBroker()

async def on_order(event):
    pass

broker.subscriber("orders", group_id="g")(exactly_once(store=AsyncInMemoryStore())(on_order))
print("faststream ok")
"""

CHECKS = {
    "": PLAIN,
    "async": ASYNC,
    "relay": RELAY,
    "consumer": CONSUMER,
    "otel": OTEL,
    "faststream": FASTSTREAM,
}


def test_the_wheel_installs_and_starts_each_role(wheel: Path, tmp_path: Path) -> None:
    lines = install_lines()
    assert [extra for extra, _ in lines] == ["", "async", "relay", "consumer", "otel", "faststream"]
    venv = tmp_path / "venv"
    ok(run([sys.executable, "-m", "venv", str(venv)]))
    py, relay = str(venv / "bin" / "python"), str(venv / "bin" / "outbox-relay")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for extra, line in lines:
        target = f"{wheel}[{extra}]" if extra else str(wheel)
        ok(run([py, "-m", "pip", "install", "-q", target], env=env, cwd=tmp_path))
        if extra == "":
            # SQLAlchemy 2.1 no longer installs greenlet; an older one may still: the
            # plain install must work without it either way.
            ok(run([py, "-m", "pip", "uninstall", "-q", "-y", "greenlet"], env=env))
        assert f"{extra or 'plain'} ok" in ok(
            run([py, "-c", CHECKS[extra]], env=env, cwd=tmp_path)
        ), line
        if extra == "":
            # Installed from the wheel, not this checkout.
            where = ok(
                run(
                    [py, "-c", "import transactional_outbox as t; print(t.__file__)"],
                    env=env,
                    cwd=tmp_path,
                )
            )
            assert str(venv) in where, where
            out = run([relay, "--help"], env=env, cwd=tmp_path)
            text = out.stdout + out.stderr
            assert out.returncode == 2, text
            assert "Traceback" not in text, text
            [line_out] = text.strip().splitlines()
            assert re.fullmatch(
                r"configuration error: the relay needs the 'relay' extra \(\w+ is not "
                r"installed\): pip install 'transactional-outbox\[relay\]'",
                line_out,
            ), text
        if extra == "relay":
            out = run([relay, "--help"], env=env, cwd=tmp_path)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "--no-enable-idempotence" in out.stdout
