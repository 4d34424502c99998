"""Settings from ``OUTBOX_*`` variables and command-line flags, generated from fields.

Works on any keyword-only settings dataclass whose fields are declared with
:func:`option`: each field's ``help``, default, choices and secrecy make its
flag and its environment variable, so ``--help`` lists every setting.
Values arrive as text and are converted by the field's type; a bad one is a
:class:`ConfigurationError` naming the setting (a secret's value never shown).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

from ..exceptions import ConfigurationError

__all__ = [
    "SECRET",
    "convert",
    "env_var",
    "option",
    "options_parser",
    "values_from_cli",
    "values_from_env",
]

SECRET = "secret"
"""The field metadata key that marks a secret (hidden in reprs, errors and ``--help``)."""


def option(default: Any, help: str, *, secret: bool = False, choices: Sequence[str] = ()) -> Any:
    """A settings field with its help text, secrecy and allowed values."""
    return field(
        default=default,
        repr=not secret,
        metadata={"help": help, SECRET: secret, "choices": tuple(choices)},
    )


def env_var(name: str) -> str:
    """The environment variable of setting ``name``."""
    return "OUTBOX_" + name.upper()


def convert(f: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    """``raw`` (text from ``source``, a variable or flag) as field ``f``'s type."""
    if not isinstance(raw, str):
        return raw
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    try:
        if kind == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("Mapping"):
            out: dict[str, str] = {}
            for item in filter(None, (p.strip() for p in raw.split(","))):
                key, sep, value = item.partition("=")
                if not sep or not key or not value:
                    raise ValueError(f"{item!r} is not NAME=TOPIC")
                out[key.strip()] = value.strip()
            return out
        if kind.startswith("tuple"):  # a comma-separated list: "a.b,c.d"
            return tuple(filter(None, (p.strip() for p in raw.split(","))))
    except ValueError as exc:
        if f.metadata.get(SECRET):  # int()/float() errors quote the value: hide them too
            raise ConfigurationError(f.name, f"{source}=***: not a valid {kind}") from None
        raise ConfigurationError(f.name, f"{source}={raw!r}: {exc}") from None
    choices = f.metadata.get("choices")
    if choices and raw not in choices:
        raise ConfigurationError(f.name, f"{source}={raw!r}: choose one of {', '.join(choices)}")
    return raw


def values_from_env(cls: type, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fields of ``cls`` set by ``OUTBOX_<FIELD>`` variables, converted."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        var = env_var(f.name)
        if var in env:
            values[f.name] = convert(f, env[var], var)
    return values


def values_from_cli(
    cls: type, parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> dict[str, Any]:
    """The fields of ``cls`` given as flags in ``argv``, converted."""
    ns = parser.parse_args(argv)
    return {
        f.name: convert(f, getattr(ns, f.name), "--" + f.name.replace("_", "-"))
        for f in dataclasses.fields(cls)
        if getattr(ns, f.name) is not None
    }


def options_parser(
    cls: type, *, required: Sequence[str], prog: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """An argument parser with a flag per field of ``cls``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [env {env_var(f.name)}]"
        kind = f.type if isinstance(f.type, str) else ""
        default = f.default
        if f.metadata.get(SECRET):
            default = "(unset)"
        elif kind.startswith(("Mapping", "tuple")):
            default = "(none)"
        elif f.name in required:
            default = "(required)"
        if kind == "bool":
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {default})",
            )
        else:
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                # Choices are checked by convert(), not argparse, so a bad value is a
                # ConfigurationError naming the setting (exit code 2 from main()), not
                # a SystemExit out of parse_args.
                metavar=(
                    "{" + ",".join(f.metadata["choices"]) + "}"
                    if f.metadata.get("choices")
                    else f.name.upper()
                ),
                help=f"{help_text} (default: {default})",
            )
    return parser
