"""MkDocs hooks for this site: the contract and benchmark pages include DESIGN.md and
BENCHMARKS.md (one place for each text), and links that point into the repository
outside ``docs/`` become plain text (they work on GitHub, where the pages are also read,
but not on the site).

A page line ``<!-- include: FILE -->`` is replaced by FILE (a path from the repository
root) without its first heading, its links read from the root.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"README.md": "index.md", "DESIGN.md": "contracts.md", "BENCHMARKS.md": "benchmarks.md"}
_INCLUDE = re.compile(r"^<!-- include: (\S+) -->$", re.M)
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^ *```")


def _rebase(text: str, base: str) -> str:
    """Links of ``text`` (a file in folder ``base`` of the repository) as the site needs."""
    out, fenced = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(lambda m: _link(m, base), line))
    return "\n".join(out)


def _link(m: re.Match[str], base: str) -> str:
    bang, label, target = m.groups()
    if re.match(r"^[a-z]+:", target) or target.startswith("#"):
        return m.group(0)
    path, _, anchor = target.partition("#")
    where = posixpath.normpath(posixpath.join(base, path))
    suffix = f"#{anchor}" if anchor else ""
    if where.startswith("docs/"):
        return f"{bang}[{label}]({where[5:]}{suffix})"
    if where in PAGES:
        return f"{bang}[{label}]({PAGES[where]}{suffix})"
    return label  # a file of the repository: named, not linked


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Expand includes, then rebase this page's own links (it lives in ``docs/``)."""
    markdown = _rebase(markdown, "docs")

    def include(m: re.Match[str]) -> str:
        text = (ROOT / m.group(1)).read_text()
        text = re.sub(r"\A# .*\n", "", text)  # the page has its own title
        return _rebase(text, posixpath.dirname(m.group(1)))

    return _INCLUDE.sub(include, markdown)
