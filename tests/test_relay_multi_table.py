"""One relay for many outbox tables on one server (issue 19), on the real stack.

Three schemas with writers in all three (some transactions write two schemas'
outbox tables at once), the relay SIGKILLed during the writes: nothing lost,
order kept per aggregate and table. A table created while the relay runs is
read without a restart; a table of the wrong shape is named, never ignored.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from .conftest import Stack
from .polling import wait_until_sync
from .relay_harness import (
    OUTBOX_DDL,
    Collector,
    RelayProcess,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)
from .test_relay_clear_errors import assert_config_exit, relay_env, run_relay

BAD_DDL = """
CREATE TABLE `{table}` (
  id BINARY(16) NOT NULL PRIMARY KEY,
  aggregatetype VARCHAR(255) NOT NULL,
  aggregateid VARCHAR(255) NOT NULL,
  type VARCHAR(255) NOT NULL,
  body LONGBLOB NOT NULL,
  headers TEXT NULL,
  `timestamp` DATETIME(6) NOT NULL
) ENGINE=InnoDB
"""


@pytest.fixture
def schemas(stack: Stack) -> Iterator[str]:
    """A prefix for this test's schemas (``<prefix>a``...), all dropped afterwards."""
    prefix = f"mt19_{uuid.uuid4().hex[:8]}_"
    yield prefix
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
            (prefix.replace("_", "\\_") + "%",),
        )
        for (name,) in cur.fetchall():
            cur.execute(f"DROP DATABASE `{name}`")


def create_schema(stack: Stack, name: str, ddl: str = OUTBOX_DDL) -> None:
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
        cur.execute(ddl.format(table=f"{name}`.`outbox"))


def outbox(schema: str) -> str:
    """``write_events``' table argument for ``schema``.outbox (it back-quotes the name)."""
    return f"{schema}`.`outbox"


def many_kw(settings_kw: dict[str, Any], topic_prefix: str, **kw: Any) -> dict[str, Any]:
    """This test's relay keywords, with the topic template naming the schema."""
    out = dict(settings_kw)
    out["mysql_url"] = out["mysql_url"].set(database=None)
    out["topic_prefix"] = topic_prefix + "{schema}."
    out.update(kw)
    return out


class Writer(threading.Thread):
    """Commits transactions of 1-3 events to one or more schemas' outbox tables at once."""

    def __init__(self, stack: Stack, targets: list[str], seed: int, tag: str) -> None:
        super().__init__(daemon=True)
        self.conn = stack.mysql_connect()
        self.targets = targets
        self.rng = random.Random(seed)
        self.tag = tag
        # (schema, aggregate id, event id) in commit order
        self.committed: list[tuple[str, str, str]] = []
        self.pairs: list[tuple[str, ...]] = []  # event ids of each multi-schema transaction
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                writes = {
                    s: [
                        make_event(aggregate_id=f"{self.tag}{self.rng.randrange(8)}")
                        for _ in range(self.rng.randint(1, 3))
                    ]
                    for s in self.targets
                }
                first, *rest = self.targets

                def also(cur: Any, rest: list[str] = rest, writes: Any = writes) -> None:
                    for s in rest:
                        for e in writes[s]:
                            cur.execute(
                                f"INSERT INTO `{s}`.outbox (id, aggregatetype, aggregateid, "
                                "type, payload, headers, `timestamp`) VALUES "
                                "(%s, %s, %s, %s, %s, NULL, %s)",
                                (
                                    e.id.bytes,
                                    e.aggregate_type,
                                    e.aggregate_id,
                                    e.event_type,
                                    e.payload,
                                    e.timestamp.replace(tzinfo=None),
                                ),
                            )

                try:
                    write_events(self.conn, writes[first], table=outbox(first), also=also)
                except pymysql.err.OperationalError as exc:
                    if exc.args[0] != 1213:  # two writers of a table: a deadlock rolls back
                        raise
                    self.conn.rollback()
                    continue
                for s in self.targets:
                    self.committed += [(s, e.aggregate_id, str(e.id)) for e in writes[s]]
                if rest:
                    self.pairs.append(tuple(str(e.id) for s in self.targets for e in writes[s]))
                self.halt.wait(0.003)
        except BaseException as exc:
            self.error = exc
        finally:
            self.conn.close()


async def test_three_schemas_sigkills_and_a_table_added_while_running(
    stack: Stack, schemas: str, settings_kw: dict[str, Any], topic_prefix: str, tmp_path: Path
) -> None:
    a, b, c, d = (schemas + x for x in "abcd")
    for s in (a, b, c):
        create_schema(stack, s)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # Two tables listed, the third (and the fourth, created later) by the pattern.
    settings = relay_settings(
        **many_kw(settings_kw, topic_prefix),
        outbox_tables=(f"{a}.outbox", f"{b}.outbox"),
        outbox_table_pattern=rf"{schemas}[a-z]\.outbox",
        checkpoint_interval_ms=50,
    )
    writers = [
        Writer(stack, [a], seed, "a"),
        Writer(stack, [b], seed + 1, "b"),
        Writer(stack, [c], seed + 2, "c"),
        Writer(stack, [a, b], seed + 3, "x"),  # one transaction, two services' tables
    ]
    topics = [f"{topic_prefix}{s}.order" for s in (a, b, c, d)]
    log = tmp_path / "relay.log"
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch(topics)
        for w in writers:
            w.start()
        for kill in range(3):
            proc = RelayProcess(settings, log)
            proc.start()
            target = len(col.records) + rng.randint(30, 200)
            await wait_until(
                lambda t=target: len(col.records) >= t,  # type: ignore[misc]
                within=60,
                what=f"progress before kill {kill} (seed {seed})",
            )
            await asyncio.sleep(rng.random() * 0.2)  # a random point, not a sync point
            assert proc.kill(signal.SIGKILL) == -signal.SIGKILL
        proc = RelayProcess(settings, log)
        proc.start()
        # A new service's schema, created while the relay runs: read without a restart.
        create_schema(stack, d)
        late = Writer(stack, [d], seed + 4, "d")
        late.start()
        await wait_until(lambda: len(late.committed) >= 20, what="writes to the new table")
        for w in [*writers, late]:
            w.halt.set()
            w.join(10)
            assert w.error is None
        committed = {eid for w in [*writers, late] for _, _, eid in w.committed}
        await wait_until(
            lambda: committed <= set(col.ids()),
            within=60,
            what=f"every committed event (seed {seed}; log {proc.log()[-2000:]})",
        )
        assert proc.kill(signal.SIGTERM) == 0, proc.log()[-3000:]

    assert set(col.ids()) == committed, f"seed {seed}"
    assert any(w.pairs for w in writers)
    # Per aggregate and table: the first copy of each event in commit order.
    first_seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    seen: set[str] = set()
    for rec in col.records:
        eid = dict(rec.headers)["id"].decode()
        if eid not in seen:
            seen.add(eid)
            first_seen[(rec.topic, rec.key.decode())].append(eid)
    expected: dict[tuple[str, str], list[str]] = defaultdict(list)
    for w in [*writers, late]:
        for schema, agg, eid in w.committed:
            expected[(f"{topic_prefix}{schema}.order", agg)].append(eid)
    assert first_seen == expected, f"seed {seed}"
    text = proc.log()
    assert f"`{d}`.`outbox` (matches outbox_table_pattern)" in text
    print(f"seed {seed}: {len(committed)} committed, {len(col.records)} received")


async def test_wrong_table_matched_by_pattern_is_dead_lettered_by_name(
    stack: Stack,
    schemas: str,
    settings_kw: dict[str, Any],
    topic_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good, bad, later = schemas + "good", schemas + "bad", schemas + "later"
    create_schema(stack, good)
    create_schema(stack, bad, BAD_DDL)
    dlq = topic_prefix + "dlq"
    settings = relay_settings(
        **many_kw(settings_kw, topic_prefix),
        outbox_table_pattern=rf"{schemas}\w+\.outbox",
        on_rejected="dead-letter",
        dead_letter_topic=dlq,
        metrics_port=0,
    )
    conn = stack.mysql_connect()
    try:
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([dlq, f"{topic_prefix}{good}.order"])
            async with running_relay(settings) as relay:
                await wait_until(lambda: relay.session is not None, what="a session")
                assert f"`{bad}`.`outbox` lacks column(s) payload" in caplog.text
                bad_id = uuid.uuid4()
                with conn.cursor() as cur:
                    cur.execute(
                        f"INSERT INTO `{bad}`.outbox VALUES (%s, 'order', 'k1', 'T', 'x', NULL, "
                        "NOW(6))",
                        (bad_id.bytes,),
                    )
                # Created at runtime with the wrong columns: its rows are dead letters too.
                create_schema(stack, later, BAD_DDL)
                with conn.cursor() as cur:
                    cur.execute(
                        f"INSERT INTO `{later}`.outbox VALUES (%s, 'order', 'k2', 'T', 'x', "
                        "NULL, NOW(6))",
                        (uuid.uuid4().bytes,),
                    )
                write_events(conn, [make_event()], table=outbox(good))
                await col.wait_for(3)
                await wait_until(
                    lambda: relay.stats.by_table.get(f"{good}.outbox") == 1,
                    what="the good table's count",
                )
                assert relay.stats.by_table[f"{bad}.outbox"] == 1
                assert "(" + f"{bad}.outbox 1" in relay.stats.progress_line(0.0)
    finally:
        conn.close()
    letters = [json.loads(r.value) for r in col.records if r.topic == dlq]
    assert {x["table"] for x in letters} == {f"{bad}.outbox", f"{later}.outbox"}
    assert str(bad_id) in {x["id"] for x in letters}
    assert all("payload" in x["reason"] for x in letters)


@pytest.fixture
def one_db_kw(settings_kw: dict[str, Any], topic_prefix: str) -> dict[str, Any]:
    return many_kw(settings_kw, topic_prefix)


def test_stop_policy_exits_2_naming_a_wrong_or_missing_table_at_startup(
    stack: Stack, schemas: str, one_db_kw: dict[str, Any], tmp_path: Path
) -> None:
    good, bad = schemas + "good", schemas + "bad"
    create_schema(stack, good)
    create_schema(stack, bad, BAD_DDL)
    pattern = rf"{schemas}\w+\.outbox"
    # Matched at startup: exit 2 naming it.
    out = run_relay(relay_env(one_db_kw, tmp_path, OUTBOX_OUTBOX_TABLE_PATTERN=pattern))
    assert_config_exit(out, "outbox_table_pattern", f"`{bad}`.`outbox` lacks column(s) payload")
    # Listed and missing: exit 2 naming it and outbox_tables.
    out = run_relay(
        relay_env(one_db_kw, tmp_path, OUTBOX_OUTBOX_TABLES=f"{good}.outbox,{good}.nope")
    )
    assert_config_exit(out, "outbox_tables", f"`{good}`.`nope` does not exist")


def test_stop_policy_exits_4_naming_a_wrong_table_created_at_runtime(
    stack: Stack, schemas: str, one_db_kw: dict[str, Any], tmp_path: Path
) -> None:
    good, bad = schemas + "good", schemas + "late_bad"
    create_schema(stack, good)
    proc = RelayProcess(
        relay_settings(**one_db_kw, outbox_table_pattern=rf"{schemas}\w+\.outbox"),
        tmp_path / "relay.log",
    )
    proc.start()
    assert proc.proc is not None
    try:
        wait_until_sync(
            lambda: "starting at" in proc.log() or proc.proc.poll() is not None,  # type: ignore[union-attr]
            what="the relay to start",
        )
        assert proc.proc.poll() is None, proc.log()[-3000:]  # running before the bad table
        create_schema(stack, bad, BAD_DDL)
        with stack.mysql_connect() as conn, conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO `{bad}`.outbox VALUES (%s, 'order', 'k', 'T', 'x', NULL, NOW(6))",
                (uuid.uuid4().bytes,),
            )
        assert proc.proc.wait(30) == 4, proc.log()[-3000:]
    finally:
        if proc.proc.poll() is None:
            proc.kill()
    text = proc.log()
    assert "Traceback" not in text
    [line] = [x for x in text.splitlines() if "stopped:" in x]
    assert f"invalid outbox row of `{bad}`.`outbox`" in line and "payload" in line
