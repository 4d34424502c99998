"""Every README code block either runs as it is or carries a ``readme-test`` marker
(the convention: tests/_readme.py), and the markers name setups that exist."""

from __future__ import annotations

import re
import subprocess
import sys

from . import _readme
from .test_readme import SETUPS


def test_every_block_runs_as_is_or_is_marked() -> None:
    found = _readme.blocks()
    assert len(found) > 10
    assert _readme.marker_problems(found) == []


def test_every_setup_named_in_the_readme_exists() -> None:
    named = {b.arg for b in _readme.blocks() if b.kind == "setup"}
    assert named <= set(SETUPS), named - set(SETUPS)


def test_an_unmarked_block_in_another_language_is_a_problem() -> None:
    text = "x\n```ini\na = 1\n```\n<!-- readme-test: skip -->\n```bash\nls\n```\n"
    problems = _readme.marker_problems(_readme.blocks(text))
    assert problems == [
        "README.md:2 (ini): not python/bash, so it needs a readme-test marker",
        "README.md:6 (bash): skip needs a reason in parentheses",
    ]


def test_the_demo_keep_option_says_it_keeps_the_redis_keys() -> None:
    # issue 24 row 9: --keep also keeps the run's Redis keys; README and --help say so.
    out = subprocess.run(
        [sys.executable, "-m", "outbox_dev.demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Redis keys" in " ".join(out.stdout.split())
    assert "`--keep`: keep the databases, the topic and the run's Redis keys" in (
        (_readme.ROOT / "docs" / "quickstart.md").read_text()
    )


def test_the_readme_gives_no_test_count_that_rots() -> None:
    # issue 24 row 9: "637 tests" while there were 668.
    for page in _readme.PAGES:
        assert not re.search(r"\b\d{3,} tests\b", (_readme.ROOT / page).read_text()), page
