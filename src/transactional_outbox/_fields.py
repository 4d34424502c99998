"""Settings fields that describe themselves: help text, secrecy, allowed values.

Shared by the settings objects whose fields become ``OUTBOX_*`` variables and
flags (``RelaySettings`` and the :class:`~transactional_outbox.KafkaConnection`
nested in it); ``relay.options`` reads these metadata keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, field
from typing import Any

__all__ = ["SECRET", "option"]

SECRET = "secret"
"""The field metadata key that marks a secret (hidden in reprs, errors and ``--help``)."""


def option(
    default: Any = MISSING, help: str = "", *, secret: bool = False, choices: Sequence[str] = ()
) -> Any:
    """A settings field with its help text, secrecy and allowed values (no default: required)."""
    return field(
        default=default,
        repr=not secret,
        metadata={"help": help, SECRET: secret, "choices": tuple(choices)},
    )
