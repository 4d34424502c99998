"""What a QUERY event's statement writes: the relay's check for statement-logged rows. Pure.

With ``binlog_format=ROW`` a write to a table reaches the binlog as row
events; a session (or a server) that logs statements (``STATEMENT``, or
``MIXED`` for the statements it deems safe) writes the SQL text instead, as
a QUERY event, which carries no row the relay could read. Such an event
naming an outbox table must stop the relay, never pass in silence; every
other statement (BEGIN/COMMIT/ROLLBACK, XA, SAVEPOINT, DDL such as
ALTER/CREATE/DROP/RENAME/TRUNCATE of the outbox table, writes to other
tables) must not.

:func:`written_tables` reads just enough of the statement to name the tables
an ``INSERT``/``REPLACE``/``UPDATE``/``DELETE``/``LOAD DATA|XML`` writes:
keywords in any case, comments skipped (``/* */``, ``-- ``, ``#``; the body
of an executable comment ``/*! ... */`` counts as SQL), names unquoted, in
backquotes or double quotes (``ANSI_QUOTES``), qualified or not, with spaces
around the dot. For multi-table UPDATE and DELETE every table the statement
references before its ``SET``/``WHERE`` counts, aliases and read-only joins
included: a false alarm there is one loud stop, a miss would be lost events.

Writes a statement makes only indirectly (a trigger or stored function that
inserts into the outbox) are not named in its text and cannot be seen here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = ["written_tables", "xa_outcome"]

# Token kinds: w word, i quoted identifier, s string, p punctuation.
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<exec>/\*M?!\d*)                     # executable comment: its body is SQL
  | (?P<comment>/\*.*?(?:\*/|\Z)|--(?=\s|\Z)[^\n]*|\#[^\n]*)
  | (?P<close>\*/)                          # the end of an executable comment
  | (?P<i>`(?:[^`]|``)*`|"(?:[^"\\]|\\.|"")*")
  | (?P<s>'(?:[^'\\]|\\.|'')*')
  | (?P<w>[0-9A-Za-z_$\u0080-\U0010ffff]+)
  | (?P<p>.)
    """,
    re.S | re.X,
)
_SKIP = frozenset({"ws", "exec", "comment", "close"})
_VERBS = frozenset({"INSERT", "REPLACE", "UPDATE", "DELETE", "LOAD", "WITH"})
_INSERT_MODIFIERS = frozenset({"LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"})
_DELETE_MODIFIERS = frozenset({"LOW_PRIORITY", "QUICK", "IGNORE"})
_JOINS = frozenset({"JOIN", "STRAIGHT_JOIN"})
_NOT_TABLES = frozenset(
    {"SELECT", "LATERAL", "VALUES", "TABLE", "WITH", "INNER", "CROSS", "LEFT", "RIGHT"}
    | {"NATURAL", "OUTER", "ONLY"}
)
_XA = re.compile(
    rb"XA\s+(COMMIT|ROLLBACK)\s+X'([0-9A-Fa-f]*)'\s*,\s*X'([0-9A-Fa-f]*)'\s*,\s*(-?\d+)"
    rb"(\s+ONE\s+PHASE)?",
    re.I,
)

Name = tuple[str | None, str]  # (schema, or None for the default one; table)


def _tokens(sql: str) -> Iterator[tuple[str, str]]:
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind is None or kind in _SKIP:
            continue
        text = m.group()
        if kind == "i":
            q = text[0]
            text = text[1:-1].replace(q + q, q)
        yield kind, text


class _Reader:
    """A one-token look-ahead over the statement's tokens."""

    def __init__(self, sql: str) -> None:
        self._it = _tokens(sql)
        self.kind, self.text = "", ""
        self.next()

    def next(self) -> None:
        self.kind, self.text = next(self._it, ("", ""))

    @property
    def word(self) -> str:
        """The current token as an upper-case keyword ("" if not a bare word)."""
        return self.text.upper() if self.kind == "w" else ""

    def name(self) -> Name | None:
        """A table name at the current token, qualified or not; None if not one."""
        if self.kind not in ("w", "i"):
            return None
        first = self.text
        self.next()
        if self.kind == "p" and self.text == ".":
            self.next()
            if self.kind in ("w", "i"):
                second = self.text
                self.next()
                return first, second
            return None
        return None, first


def written_tables(sql: str) -> list[Name]:
    """The tables a DML statement writes or may write; [] for anything else.

    ``sql`` is a QUERY event's statement. See the module doc for what counts.
    """
    r = _Reader(sql)
    verb = r.word
    if verb not in _VERBS:
        return []
    if verb == "WITH":
        # WITH ... UPDATE/DELETE (MySQL 8): the statement's verb follows the CTEs.
        depth = 0
        while r.kind and not (depth == 0 and r.word in ("UPDATE", "DELETE", "SELECT")):
            if r.kind == "p":
                depth += {"(": 1, ")": -1}.get(r.text, 0)
            r.next()
        verb = r.word
        if verb not in ("UPDATE", "DELETE"):
            return []
    r.next()
    if verb in ("INSERT", "REPLACE"):
        while r.word in _INSERT_MODIFIERS:
            r.next()
        name = r.name()
        return [] if name is None else [name]
    if verb == "LOAD":
        # LOAD DATA|XML ... INFILE 'file' [REPLACE|IGNORE] INTO TABLE name
        while r.kind:
            if r.word == "INTO":
                r.next()
                if r.word == "TABLE":
                    r.next()
                    name = r.name()
                    return [] if name is None else [name]
            else:
                r.next()
        return []
    if verb == "UPDATE":
        while r.word in ("LOW_PRIORITY", "IGNORE"):
            r.next()
        return _references(r, stop=frozenset({"SET"}))
    while r.word in _DELETE_MODIFIERS:
        r.next()
    # DELETE [FROM] list [USING|FROM refs] [WHERE ...]: every table of both parts.
    stop = frozenset({"WHERE", "ORDER", "LIMIT", "RETURNING", "PARTITION"})
    if r.word == "FROM":
        r.next()
    found = _references(r, stop=stop | {"USING", "FROM"})
    if r.word in ("USING", "FROM"):
        r.next()
        found += _references(r, stop=stop)
    return found


def _references(r: _Reader, *, stop: frozenset[str]) -> list[Name]:
    """The names in a list of table references, up to a ``stop`` keyword at depth 0.

    A name counts where a table may stand: first, after a comma at depth 0 or a
    JOIN, or just inside a parenthesis there; not in ON/USING join conditions,
    subqueries, index hints or partition lists.
    """
    found: list[Name] = []
    expect, depth, in_condition, joined = True, 0, False, False
    while r.kind:
        word = r.word
        # After a JOIN, USING starts its condition, not DELETE's USING part.
        if depth == 0 and word in stop and not (word == "USING" and joined):
            break
        if r.kind == "p":
            if r.text == "(":
                depth += 1
                expect = expect and not in_condition
            elif r.text == ")":
                depth = max(0, depth - 1)
            elif r.text == "," and depth == 0:
                expect, in_condition, joined = True, False, False
            r.next()
            continue
        if word in _JOINS:
            expect, in_condition, joined = True, False, True
            r.next()
            continue
        if word in ("ON", "USING"):
            expect, in_condition = False, True
            r.next()
            continue
        if expect and word in _NOT_TABLES:
            expect = word in ("INNER", "CROSS", "LEFT", "RIGHT", "NATURAL", "OUTER")
        elif expect:
            name = r.name()
            if name is not None:
                found.append(name)
                expect = False
                continue
        r.next()
    return found


def xa_outcome(sql: bytes) -> tuple[bool, tuple[int, bytes, bytes], bool] | None:
    """``XA COMMIT|ROLLBACK X'gtrid',X'bqual',format_id [ONE PHASE]`` as the server
    logs it: (committed, (format_id, gtrid, bqual), one_phase); None if not one."""
    m = _XA.match(sql)
    if m is None:
        return None
    verb, gtrid, bqual, fmt, one = m.groups()
    xid = (int(fmt), bytes.fromhex(gtrid.decode()), bytes.fromhex(bqual.decode()))
    return verb.upper() == b"COMMIT", xid, one is not None
