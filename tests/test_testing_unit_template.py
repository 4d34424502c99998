"""``to_record`` refuses a topic template it cannot fill (issue 24, row 9).

``topic_template="outbox.{schema}.{aggregatetype}"`` without ``outbox_table=``
used to give the topic ``outbox..order``, which the relay never publishes to.
"""

from __future__ import annotations

import pytest

from transactional_outbox import ConfigurationError, OutboxEvent
from transactional_outbox.testing import to_received, to_record

EVENT = OutboxEvent.create(aggregate_type="order", aggregate_id=1, event_type="X", payload={})


@pytest.mark.parametrize("placeholder", ["schema", "table"])
def test_a_template_with_a_table_placeholder_needs_outbox_table(placeholder: str) -> None:
    template = f"outbox.{{{placeholder}}}.{{aggregatetype}}"
    for convert in (to_record, to_received):
        with pytest.raises(ConfigurationError) as err:
            convert(EVENT, topic_template=template)
        assert str(err.value).startswith("outbox_table: ")
        assert f"{{{placeholder}}}" in str(err.value)


def test_outbox_table_without_a_schema_is_refused_for_a_schema_template() -> None:
    with pytest.raises(ConfigurationError, match=r"\{table\}"):
        to_record(EVENT, topic_template="{schema}.{table}.{aggregatetype}", outbox_table="shop")


def test_a_filled_template_gives_the_relay_topic() -> None:
    template = "outbox.{schema}.{aggregatetype}"
    assert to_record(EVENT, topic_template=template, outbox_table="shop.outbox").topic == (
        "outbox.shop.order"
    )
    assert to_record(EVENT).topic == "outbox.event.order"
