"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a page
missing from the nav or a reference that does not resolve fails it), and every public
name (``__all__`` of the package, the consumer, testing, the relay and faststream) has
a documented entry in the API reference."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zlib
from pathlib import Path

import griffe
import pytest

from .conftest import ROOT

MODULES = (
    "transactional_outbox",
    "transactional_outbox.consumer",
    "transactional_outbox.testing",
    "transactional_outbox.relay",
    "transactional_outbox.faststream",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def inventory(site: Path) -> set[str]:
    """The names the site documents (mkdocstrings' objects.inv)."""
    header_lines = 4
    raw = (site / "objects.inv").read_bytes().split(b"\n", header_lines)
    return {line.split(" ")[0] for line in zlib.decompress(raw[-1]).decode().splitlines()}


def test_every_public_name_has_a_reference_entry(site: Path) -> None:
    documented = inventory(site)
    missing = [
        f"{module}.{name}"
        for module in MODULES
        for name in importlib.import_module(module).__all__
        if f"{module}.{name}" not in documented
    ]
    assert missing == []


def test_every_public_name_has_a_docstring() -> None:
    package = griffe.load("transactional_outbox", search_paths=[str(ROOT / "src")])
    bare = []
    for module in MODULES:
        node = package if module == "transactional_outbox" else package[module.split(".", 1)[1]]
        for name in importlib.import_module(module).__all__:
            obj = node[name]
            target = obj.final_target if obj.is_alias else obj
            if not (target.docstring and target.docstring.value.strip()):
                bare.append(f"{module}.{name}")
    assert bare == []
