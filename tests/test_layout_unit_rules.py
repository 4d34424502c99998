"""The source tree's own rules (DESIGN §6), checked on the code (no servers):

- no private name (``_name``) of one module is used from another: not imported
  (``from .x import _y``), not read as an attribute (``obj._y``) where ``_y`` is
  defined only in another module of the package. Private *modules* (``_lazy``,
  ``_fields``) are fine: what they export has public names.
- no file in ``src/`` is longer than 400 lines, except those listed here with
  the reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "transactional_outbox"
MAX_LINES = 400
# Known and left for now: relay/binlog/ is being reworked on another branch
# (multi-table relay); each entry must still be true, so fixing one fails this
# test until it is removed here.
KNOWN_PRIVATE_USES = {
    "relay/binlog/events.py: uses ._add (MySQLGtidSet, relay/position.py)",
}
KNOWN_LONG = {"relay/binlog/events.py"}  # its docstring is to say why (the hot loop inline)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules() -> dict[str, ast.Module]:
    return {
        path.relative_to(SRC).as_posix(): ast.parse(path.read_text(), str(path))
        for path in sorted(SRC.rglob("*.py"))
    }


def _defined(tree: ast.Module) -> set[str]:
    """Private names a module defines: functions, classes, methods, attributes it assigns."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # setattr(obj, "_x", ...), __slots__ = ("_x", ...)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.rpartition(".")[2])
    return {n for n in names if _private(n)}


def _private_uses(name: str, tree: ast.Module, own: set[str], elsewhere: set[str]) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.level or "transactional_outbox" in (node.module or "")
        ):
            for alias in node.names:
                if _private(alias.name):
                    yield f"{name}: imports {alias.name} from {node.module}"
        elif (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and node.attr not in own
            and node.attr in elsewhere
        ):
            yield f"{name}: uses .{node.attr}"


def test_no_private_name_is_used_across_modules() -> None:
    trees = _modules()
    defined = {name: _defined(tree) for name, tree in trees.items()}
    found: set[str] = set()
    for name, tree in trees.items():
        elsewhere = set().union(*(d for other, d in defined.items() if other != name))
        found.update(_private_uses(name, tree, defined[name], elsewhere))
    known = {k.partition(" (")[0] for k in KNOWN_PRIVATE_USES}
    assert found - known == set(), "private names used across modules:\n" + "\n".join(
        sorted(found - known)
    )
    assert known <= found, f"fixed, remove from KNOWN_PRIVATE_USES: {known - found}"


def test_source_files_stay_short() -> None:
    too_long = {
        path.relative_to(SRC).as_posix(): path.read_text().count("\n")
        for path in sorted(SRC.rglob("*.py"))
    }
    too_long = {rel: n for rel, n in too_long.items() if n > MAX_LINES}
    assert too_long.keys() - KNOWN_LONG == set(), f"files over {MAX_LINES} lines: {too_long}"
    assert too_long.keys() >= KNOWN_LONG, f"short now, remove from KNOWN_LONG: {KNOWN_LONG}"
