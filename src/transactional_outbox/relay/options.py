"""Settings from ``OUTBOX_*`` variables and command-line flags, generated from fields.

Works on any keyword-only settings dataclass whose fields are declared with
:func:`option`: each field's ``help``, default, choices and secrecy make its
flag and its environment variable, so ``--help`` lists every setting. A field
declared with :func:`nested` holds another such dataclass (``kafka``: a
:class:`~transactional_outbox.KafkaConnection`); its fields are flattened
under a prefix (``kafka_bootstrap_servers``: ``--kafka-bootstrap-servers``,
``OUTBOX_KAFKA_BOOTSTRAP_SERVERS``). Values arrive as text and are converted
by the field's type; a bad one is a :class:`ConfigurationError` naming the
setting (a secret's value never shown). A renamed setting's old variable or
flag is an error naming the new one, never silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

from .._fields import SECRET, option
from ..exceptions import ConfigurationError

__all__ = [
    "SECRET",
    "convert",
    "env_var",
    "flag",
    "flat_fields",
    "nest_values",
    "nested",
    "option",
    "options_parser",
    "overlay",
    "values_from_cli",
    "values_from_env",
]

_RENAMED_DEST = "renamed "  # argparse dest prefix of an old, renamed flag (no field has a space)


def _unit(name: str) -> str:
    return " (milliseconds)" if name.endswith("_ms") else ""


def nested(cls: type, *, prefix: str, help: str) -> Any:
    """A settings field holding a ``cls`` whose fields are set as ``<prefix><field>``."""
    return field(default=None, metadata={"help": help, "nested": cls, "prefix": prefix})


def env_var(name: str) -> str:
    """The environment variable of setting ``name``."""
    return "OUTBOX_" + name.upper()


def flag(name: str) -> str:
    """The command-line flag of setting ``name``."""
    return "--" + name.replace("_", "-")


def flat_fields(cls: type) -> list[tuple[str, dataclasses.Field[Any]]]:
    """Every setting of ``cls`` as (flat name, field), nested fields flattened."""
    out: list[tuple[str, dataclasses.Field[Any]]] = []
    for f in dataclasses.fields(cls):
        inner = f.metadata.get("nested")
        if inner is None:
            out.append((f.name, f))
            continue
        for sub in dataclasses.fields(inner):
            if sub.metadata.get("help"):  # fields without help are for code only
                out.append((f.metadata["prefix"] + sub.name, sub))
    return out


def convert(f: dataclasses.Field[Any], raw: Any, source: str, *, name: str = "") -> Any:
    """``raw`` (text from ``source``, a variable or flag) as field ``f``'s type.

    Errors name setting ``name`` (default: the field's name).
    """
    name = name or f.name
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
            raise ConfigurationError(name, f"{source}=***: not a valid {kind}") from None
        raise ConfigurationError(name, f"{source}={raw!r}: {exc}") from None
    choices = f.metadata.get("choices")
    if choices and raw not in choices:
        raise ConfigurationError(name, f"{source}={raw!r}: choose one of {', '.join(choices)}")
    return raw


def values_from_env(
    cls: type, environ: Mapping[str, str] | None = None, *, renamed: Mapping[str, str] = {}
) -> dict[str, Any]:
    """The settings of ``cls`` set by ``OUTBOX_<SETTING>`` variables, converted (flat names).

    ``renamed`` maps an old setting name to its new one: its variable is an error.
    """
    env = os.environ if environ is None else environ
    for old, new in renamed.items():
        if env_var(old) in env:
            raise ConfigurationError(
                new, f"{env_var(old)} was renamed: set {env_var(new)}{_unit(new)}"
            )
    values: dict[str, Any] = {}
    for name, f in flat_fields(cls):
        var = env_var(name)
        if var in env:
            values[name] = convert(f, env[var], var, name=name)
    return values


def values_from_cli(
    cls: type, parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> dict[str, Any]:
    """The settings of ``cls`` given as flags in ``argv``, converted (flat names)."""
    ns = parser.parse_args(argv)
    for dest, value in vars(ns).items():
        if dest.startswith(_RENAMED_DEST) and value is not None:
            old, new = dest.removeprefix(_RENAMED_DEST).split()
            raise ConfigurationError(new, f"{flag(old)} was renamed: use {flag(new)}{_unit(new)}")
    return {
        name: convert(f, getattr(ns, name), flag(name), name=name)
        for name, f in flat_fields(cls)
        if getattr(ns, name) is not None
    }


def overlay(cls: type, below: Mapping[str, Any], above: Mapping[str, Any]) -> dict[str, Any]:
    """Flat values ``above`` on top of ``below``: a nested field's value given in
    ``above`` (``kafka=KafkaConnection(...)``) replaces its flat settings from ``below``."""
    out = dict(below)
    for f in dataclasses.fields(cls):
        inner = f.metadata.get("nested")
        if inner is not None and f.name in above:
            for sub in dataclasses.fields(inner):
                out.pop(f.metadata["prefix"] + sub.name, None)
    out.update(above)
    return out


def nest_values(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``cls`` from flat ``values``: nested fields built.

    A nested field is built from its ``<prefix><field>`` values (on top of a
    value given for the field itself, if any); a required one that is missing,
    or invalid, is a :class:`ConfigurationError` naming the flat setting.
    """
    out = dict(values)
    for f in dataclasses.fields(cls):
        inner = f.metadata.get("nested")
        if inner is None:
            continue
        prefix = f.metadata["prefix"]
        given = {
            sub.name: out.pop(prefix + sub.name)
            for sub in dataclasses.fields(inner)
            if prefix + sub.name in out
        }
        base = out.get(f.name)
        if not given:
            continue  # as given, or left to cls: its own "not set" error
        if base is None:
            for sub in dataclasses.fields(inner):
                missing = sub.default is dataclasses.MISSING
                if missing and sub.default_factory is dataclasses.MISSING and sub.name not in given:
                    name = prefix + sub.name
                    raise ConfigurationError(
                        name, f"not set: set {env_var(name)} or {flag(name)} (no default)"
                    )
        try:
            out[f.name] = inner(**given) if base is None else dataclasses.replace(base, **given)
        except ConfigurationError as exc:
            raise ConfigurationError(prefix + exc.setting, exc.message) from None
    return out


def options_parser(
    cls: type,
    *,
    required: Sequence[str],
    prog: str,
    description: str,
    epilog: str,
    renamed: Mapping[str, str] = {},
) -> argparse.ArgumentParser:
    """An argument parser with a flag per setting of ``cls`` (nested fields flattened).

    ``renamed`` (old name → new) adds each old flag, hidden, so using it is an
    error naming the new one rather than argparse's "unrecognized arguments".
    """
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    for name, f in flat_fields(cls):
        help_text = f"{f.metadata['help']} [env {env_var(name)}]"
        kind = f.type if isinstance(f.type, str) else ""
        default = f.default
        if f.metadata.get(SECRET):
            default = "(unset)"
        elif kind.startswith(("Mapping", "tuple")):
            default = "(none)"
        elif name in required:
            default = "(required)"
        if kind == "bool":
            parser.add_argument(
                flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {default})",
            )
        elif "bare" in f.metadata:  # a value, or the flag alone / its --no- form
            parser.add_argument(
                flag(name),
                dest=name,
                nargs="?",
                const=f.metadata["bare"],
                default=None,
                metavar="VALUE",
                help=f"{help_text} (default: {default})",
            )
            parser.add_argument(
                "--no-" + flag(name)[2:],
                dest=name,
                action="store_const",
                const=f.metadata["negated"],
                help=argparse.SUPPRESS,
            )
        else:
            parser.add_argument(
                flag(name),
                dest=name,
                default=None,
                # Choices are checked by convert(), not argparse, so a bad value is a
                # ConfigurationError naming the setting (exit code 2 from main()), not
                # a SystemExit out of parse_args.
                metavar=(
                    "{" + ",".join(f.metadata["choices"]) + "}"
                    if f.metadata.get("choices")
                    else name.upper()
                ),
                help=f"{help_text} (default: {default})",
            )
    for old, new in renamed.items():
        parser.add_argument(
            flag(old),
            dest=f"{_RENAMED_DEST}{old} {new}",
            nargs="?",
            const="",
            default=None,
            help=argparse.SUPPRESS,
        )
    return parser
