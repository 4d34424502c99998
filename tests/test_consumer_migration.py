"""The ``outbox_0002`` alembic revision creates the inbox table SqlStore expects."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from alembic import command
from transactional_outbox.consumer import ReceivedEvent, SqlStore, idempotent_consumer, inbox_table

from ._consumer_helpers import make_record, order_event
from .conftest import ROOT


def _config(url: URL, **attributes: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.set_main_option("version_locations", "transactional_outbox:migrations/versions")
    config.set_main_option("path_separator", "space")
    config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False))
    config.attributes["configure_logger"] = False
    config.attributes.update(attributes)
    return config


def test_revision_chain() -> None:
    script = ScriptDirectory.from_config(_config(URL.create("mysql+pymysql")))
    inbox = script.get_revision("outbox_0002")
    assert inbox is not None and inbox.down_revision == "outbox_0001"
    assert script.get_heads() == ["outbox_0002"]


def test_upgrade_creates_the_inbox_table_and_downgrade_drops_it(
    mysql_url: URL, engine: sa.Engine
) -> None:
    config = _config(mysql_url)
    command.upgrade(config, "head")
    inspector = sa.inspect(engine)
    columns = {c["name"]: c for c in inspector.get_columns("outbox_inbox")}
    assert list(columns) == ["consumer", "event_id", "processed_at"]
    assert str(columns["event_id"]["type"]) == "BINARY(16)"
    assert columns["processed_at"]["type"].fsp == 6
    pk = inspector.get_pk_constraint("outbox_inbox")["constrained_columns"]
    assert pk == ["consumer", "event_id"]

    # The migrated table is the one the store's default definition describes.
    @idempotent_consumer(store=SqlStore(sessionmaker(engine)), consumer_name="svc")
    def handle(event: ReceivedEvent, session: Session) -> None:
        pass

    record = make_record(order_event())
    assert [handle(record), handle(record)] == [True, False]

    command.downgrade(config, "outbox_0001")
    assert not sa.inspect(engine).has_table("outbox_inbox")
    assert sa.inspect(engine).has_table("outbox")


def test_table_name_is_configurable(mysql_url: URL, engine: sa.Engine) -> None:
    command.upgrade(_config(mysql_url, outbox_inbox_table="billing_inbox"), "head")
    assert sa.inspect(engine).has_table("billing_inbox")
    table = inbox_table(sa.MetaData(), name="billing_inbox")

    @idempotent_consumer(store=SqlStore(sessionmaker(engine), table=table))
    def handle(event: ReceivedEvent, session: Session) -> None:
        pass

    record = make_record(order_event())
    assert [handle(record), handle(record)] == [True, False]
