"""The fenced code blocks of README.md and of the guide pages under docs/ (:data:`PAGES`, in
reading order), and their ``readme-test`` markers (see tests/test_readme.py).

A marker is an HTML comment on the line right before a block's opening fence (indented
like the fence for a block inside a list item)::

    <!-- readme-test: KIND (free text: why, or what the setup provides) -->

KIND is one of:

- ``skip``: not run; the parenthesised reason is required (say what runs it instead).
- ``setup=NAME``: run by tests/test_readme.py after its setup ``NAME`` (a database, a
  model, a temp directory...); the setup may replace the README's example database URL
  ``mysql+pymysql://app:secret@db/shop`` with a test database's. Blocks with the same
  setup run in order, in one test.
- ``file=NAME``: written as ``NAME`` into the project a later ``pytest`` block runs in.
- ``pytest``: a test module: pytest runs it in a fresh directory with the ``file=``
  blocks before it; every test in it must pass.
- ``alembic-ini``: keys to set in the ``[alembic]`` section of an app's alembic.ini
  (applied by the ``alembic_app`` setup between its blocks).
- ``wheel-install``: ``pip install`` lines that tests/test_wheel_install.py installs
  from the built wheel.

A ``python`` or ``bash`` block without a marker runs as it is (python in a fresh
interpreter, bash in a temp directory with the local stack's environment): it must not
need anything the README has not set up. Every other block needs a marker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = (
    "README.md",
    "docs/quickstart.md",
    "docs/writing.md",
    "docs/relay.md",
    "docs/consumer.md",
    "docs/tracing.md",
    "docs/faststream.md",
    "docs/testing.md",
)
"""Every page whose blocks run, in reading order (a setup's blocks run in this order)."""

KINDS = ("skip", "setup", "file", "pytest", "alembic-ini", "wheel-install")
RUN_AS_IS = ("python", "bash")

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
_MARKER = re.compile(
    r"^ *<!-- readme-test: (?P<kind>[\w-]+)(?:=(?P<arg>[\w.-]+))?(?P<note>.*?)-->\s*$"
)


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    line: int  # 1-based line of the opening fence
    lang: str
    code: str  # dedented by the fence's indentation
    kind: str | None  # the marker's kind, None without a marker
    arg: str | None  # setup=NAME / file=NAME
    note: str  # the marker's free text, e.g. "(reason)"
    page: str = "README.md"

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line} ({self.lang or 'no language'})"


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the pages (or of ``text``, as README.md), in order, with the
    marker before it (if any)."""
    if text is not None:
        return _blocks(text, "README.md")
    return [b for page in PAGES for b in _blocks((ROOT / page).read_text(), page)]


def _blocks(text: str, page: str) -> list[Block]:
    lines = text.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent = len(m["indent"])
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        marker = _MARKER.match(lines[start - 1]) if start > 0 else None
        out.append(
            Block(
                line=start + 1,
                lang=m["lang"],
                code="\n".join(body) + "\n",
                kind=marker["kind"] if marker else None,
                arg=marker["arg"] if marker else None,
                note=marker["note"].strip() if marker else "",
                page=page,
            )
        )
        i += 1
    return out


def marker_problems(found: list[Block]) -> list[str]:
    """What is wrong with the blocks' markers (empty when every block is runnable or marked)."""
    problems = []
    for b in found:
        if b.kind is None:
            if b.lang not in RUN_AS_IS:
                problems.append(f"{b.where}: not python/bash, so it needs a readme-test marker")
        elif b.kind not in KINDS:
            problems.append(f"{b.where}: unknown readme-test kind {b.kind!r}")
        elif b.kind in ("setup", "file") and not b.arg:
            problems.append(f"{b.where}: {b.kind}= needs a name")
        elif b.kind == "skip" and not re.fullmatch(r"\(.+\)", b.note):
            problems.append(f"{b.where}: skip needs a reason in parentheses")
    return problems


def of_kind(kind: str, arg: str | None = None) -> list[Block]:
    """The pages' blocks with this marker (and name), in order."""
    return [b for b in blocks() if b.kind == kind and (arg is None or b.arg == arg)]
