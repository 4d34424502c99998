"""A griffe extension for the documentation site: Sphinx roles in our docstrings
(:class:`~pkg.Name`, :func:`name`, ...) become code spans (``Name``), as Markdown shows
them; the docstrings stay as they are (they read well in ``help()`` too)."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|data|exc|mod|obj):`~?([^`]+)`")


def _code(match: re.Match[str]) -> str:
    name = match.group(1)
    # "~a.b.C" shows "C"; "a.b.C" too (short, like Sphinx's ~ would)
    return f"`{name.rsplit('.', 1)[-1]}`"


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
