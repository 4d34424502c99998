"""Two tiers for the whole suite (tests/ and examples/): unit and integration tests.

A unit test needs no server and runs in seconds; ``./dev/test -m unit`` runs only those
and starts no stack. A test file is unit when its name says so (``test_*_unit_*.py``),
when it tests an example app (``examples/*/test_*.py``: SQLite only) or when it is listed
in ``UNIT_FILES``. Every other file is integration (real servers through the ``stack``
fixture of tests/conftest.py). A unit test that asks for ``stack``, even through another
fixture, stops the collection with the names of the tests, whatever ``-m`` says.
"""

from __future__ import annotations

import fnmatch

import pytest

# Unit files whose names predate the test_*_unit_* rule.
UNIT_FILES = frozenset(
    {
        "tests/test_consumer_received.py",
        "tests/test_event.py",
        "tests/test_testing_capture.py",
        "tests/test_testing_records.py",
    }
)
UNIT_PATTERNS = ("tests/test_*_unit_*.py", "examples/*/test_*.py")


def is_unit_file(relpath: str) -> bool:
    """Whether the test file at ``relpath`` (from the repository root, with /) is unit."""
    return relpath in UNIT_FILES or any(fnmatch.fnmatch(relpath, p) for p in UNIT_PATTERNS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        if not is_unit_file(item.path.relative_to(config.rootpath).as_posix()):
            continue
        item.add_marker(pytest.mark.unit)
        if "stack" in item.fixturenames:
            wrong.append(item.nodeid)
    if wrong:
        raise pytest.UsageError(
            "unit tests must not use the stack fixture (rename the file or move the test): "
            + ", ".join(wrong)
        )
