"""Query parameters and identifiers: the one place runtime values become SQL text.

Why render parameters ourselves instead of letting each backend do it: clickhouse-driver
renders ``%(name)s`` on the client, chDB only knows server-side ``{name:Type}`` placeholders
(which ClickHouse 18.16 does not have at all). Rendering here, for both backends, gives one
parameter style with one set of escaping rules, tested once, that both engines read alike.

The rules (the same as Python's DB-API ``pyformat``):

* a placeholder is ``%(name)s``; a literal percent sign is ``%%``; any other ``%`` is refused;
* every placeholder must have a value and every value a placeholder (a typo is an error, not a
  silently ignored filter);
* values become literals by type (:func:`quote`): ``None`` → ``NULL``, ``bool`` → ``1``/``0``,
  ``int``/``float`` as numbers (``nan``, ``inf``), ``str`` and ``bytes`` as single-quoted
  strings with backslash escapes (bytes outside printable ASCII as ``\\xHH``, so binary values
  are byte-exact and the SQL text stays valid UTF-8), timezone-aware ``datetime`` →
  ``toDateTime('…', 'UTC')`` (whole seconds), ``date`` → ``toDate('…')``, ``UUID`` as a string,
  ``list`` → array literal ``[…]``, ``tuple`` → ``(…)`` for ``IN``.

Identifiers never come from parameters: table names are spliced in by :func:`table_sql` only
after checking them against the schema's allow-list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from tracing.clickhouse._errors import ClickhouseUsageError
from tracing.clickhouse._schema import TABLES

__all__ = ["quote", "render", "table_sql"]

# `%(name)s`, `%%`, or a bare `%` (group 'bad') that is neither.
_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)s|(?P<pct>%)|(?P<bad>))")

# Characters ClickHouse reads back from the escapes below, in every version we support (18.16
# knows no `\u`, so nothing here produces one).
_NAMED_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\0": "\\0",
    "\b": "\\b",
    "\f": "\\f",
    "\r": "\\r",
    "\n": "\\n",
    "\t": "\\t",
    "\a": "\\a",
    "\v": "\\v",
}
_STR_ESCAPES: dict[int, str] = {
    **{c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]},
    **{ord(k): v for k, v in _NAMED_ESCAPES.items()},
}
_BYTE_ESCAPES: list[str] = [
    _NAMED_ESCAPES.get(chr(b)) or (chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}")
    for b in range(256)
]


def quote(value: Any, *, name: str = "value") -> str:
    """``value`` as a ClickHouse literal (see the module docstring for the mapping).

    ``name`` only serves error messages. Raises :class:`ClickhouseUsageError` for a type with
    no safe literal form, a naive datetime, an empty tuple or a string that is not valid
    Unicode.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):  # before int: bool is an int
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ClickhouseUsageError(
                f"parameter {name!r} is not valid Unicode ({e.reason} at {e.start}); "
                f"pass raw bytes as a bytes value instead"
            ) from e
        return "'" + value.translate(_STR_ESCAPES) + "'"
    if isinstance(value, bytes | bytearray | memoryview):
        return "'" + "".join([_BYTE_ESCAPES[b] for b in bytes(value)]) + "'"
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ClickhouseUsageError(
                f"parameter {name!r} is a naive datetime ({value.isoformat()}), which is "
                f"ambiguous; pass a timezone-aware one, e.g. datetime.now(UTC)"
            )
        utc = value.astimezone(UTC)
        return f"toDateTime('{utc:%Y-%m-%d %H:%M:%S}', 'UTC')"
    if isinstance(value, date):
        return f"toDate('{value:%Y-%m-%d}')"
    if isinstance(value, UUID):
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ", ".join(quote(v, name=name) for v in value) + "]"
    if isinstance(value, tuple):
        if not value:
            raise ClickhouseUsageError(
                f"parameter {name!r} is an empty tuple: ClickHouse has no empty IN list "
                f"(`x IN ()` is a syntax error); skip the condition when there is nothing to "
                f"match, or test membership with has(%({name})s, x) and a list"
            )
        return "(" + ", ".join(quote(v, name=name) for v in value) + ")"
    raise ClickhouseUsageError(
        f"parameter {name!r} is a {type(value).__name__}, which has no safe SQL literal here; "
        f"pass str, bytes, int, float, bool, None, an aware datetime, date, UUID, "
        f"list (array) or tuple (IN list)"
    )


def render(query: str, params: Mapping[str, Any] | None) -> str:
    """``query`` with every ``%(name)s`` replaced by ``quote(params[name])`` and ``%%`` by ``%``.

    Always applied, also without parameters, so a query means the same whether or not it has
    any (a literal percent sign is always written ``%%``).
    """
    params = params or {}
    used: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        if match.group("pct") is not None:
            return "%"
        name = match.group("name")
        if name is None:
            raise ClickhouseUsageError(
                f"stray '%' at position {match.start()} of the query "
                f"{_excerpt(query, match.start())!r}: placeholders are written %(name)s and a "
                f"literal percent sign %%"
            )
        if name not in params:
            raise ClickhouseUsageError(
                f"query parameter %({name})s has no value; pass it in params "
                f"(given: {sorted(params) or 'none'})"
            )
        used.add(name)
        return quote(params[name], name=name)

    rendered = _PLACEHOLDER.sub(substitute, query)
    unused = set(params) - used
    if unused:
        raise ClickhouseUsageError(
            f"query parameters {sorted(unused)} are not used by the query (no %(name)s for "
            f"them); remove them or fix the placeholder's spelling"
        )
    return rendered


def table_sql(template: str, table: str) -> str:
    """``template`` with ``{table}`` replaced by ``table``, which must be in the allow-list.

    The only way a table name that is not spelled out in a SQL constant reaches SQL text.
    """
    if table not in TABLES:
        raise ClickhouseUsageError(
            f"unknown table {table!r}: Meshtap's tables are {sorted(TABLES)}; a new table "
            f"needs a migration and an entry in tracing/clickhouse/_schema.py"
        )
    return template.replace("{table}", table)


def _excerpt(text: str, at: int, width: int = 30) -> str:
    return text[max(0, at - width) : at + width]
