"""Settings fields that describe themselves: help text, secrecy, allowed values;
and :func:`mask_url`, for the secret a URL setting holds.

Shared by the settings objects whose fields become ``OUTBOX_*`` variables and
flags (``RelaySettings`` and the :class:`~transactional_outbox.KafkaConnection`
nested in it); ``relay.options`` reads these metadata keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import MISSING, field
from typing import Any

_QUERY_SECRET = re.compile(r"([?&][A-Za-z_]*password=)[^&]*")

__all__ = ["SECRET", "mask_url", "option"]

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


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to log).

    Not ``urlsplit``: SQLAlchemy accepts unescaped ``/``, ``#``, ``?`` and ``@`` in a
    password, which ``urlsplit`` reads as the path, fragment or query and would leave
    visible. Everything up to the last ``@`` after the user name is masked instead
    (masking too much is safe; too little is not).
    """
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep:
        return url
    # A password given as a query parameter (redis-py's ?password=, ?sentinel_password=).
    tail = _QUERY_SECRET.sub(r"\1***", rest[at + 1 :])
    user, colon, _ = rest[:at].partition(":") if at >= 0 else ("", "", "")
    if not colon:
        return f"{scheme}://{rest[: at + 1]}{tail}"
    return f"{scheme}://{user}:***@{tail}"
