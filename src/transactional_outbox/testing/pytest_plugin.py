"""The pytest plugin: an ``outbox_events`` fixture.

Enable it in your top-level ``conftest.py`` (or in a test module)::

    pytest_plugins = ["transactional_outbox.testing.pytest_plugin"]

It is deliberately not a ``pytest11`` entry point: that would load it into the
test run of every project that installs this package, whether it wants it or not.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._capture import CapturedEvents, capture_events

__all__ = ["outbox_events"]


@pytest.fixture
def outbox_events() -> Iterator[CapturedEvents]:
    """The outbox events committed during the test, in commit order (see ``capture_events``)."""
    with capture_events() as captured:
        yield captured
