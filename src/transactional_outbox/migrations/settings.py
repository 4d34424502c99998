"""How the shipped revisions read their table names from the app's Alembic setup."""

from __future__ import annotations

from alembic import context

__all__ = ["setting"]


def setting(key: str) -> str | None:
    """``key`` from, first found: ``config.attributes`` (set in env.py), ``-x key=...``,
    then the ``[alembic]`` section of alembic.ini."""
    config = context.config
    value = config.attributes.get(key)
    if value is None:
        value = context.get_x_argument(as_dictionary=True).get(key)
    if value is None:
        value = config.get_main_option(key)
    return str(value) if value else None
