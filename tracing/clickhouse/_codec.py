"""ClickHouse types, and the binary formats the chDB backend speaks; pure functions, no I/O.

* :func:`parse_type` reads a ClickHouse type name (``Array(Nullable(String))``,
  ``DateTime('UTC')``, ``Enum8('a' = 1)`` ...) into a :class:`TypeNode`.
* :func:`decode_rowbinary` reads chDB's ``RowBinaryWithNamesAndTypes`` output. chDB's Arrow
  output cannot tell ``DateTime`` from ``UInt32`` and turns binary strings into text; RowBinary
  carries the exact types and bytes.
* :func:`encode_native_block` writes one block of the ``Native`` format, which chDB ingests as
  fast as it can read memory: columnar in, columnar on disk, no text parsing, binary-safe.
* :func:`result_converter` turns either backend's raw values (strings as ``bytes``) into the
  Python values :meth:`ClickHouse.execute` promises, so both backends answer alike.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate, chain
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "TypeNode",
    "UnsupportedType",
    "decode_rowbinary",
    "encode_native_block",
    "parse_type",
    "result_converter",
]

_EPOCH_DATE = date(1970, 1, 1)


class UnsupportedType(Exception):
    """A type this module cannot read or write; the caller turns it into a usage error."""


@dataclass(frozen=True, slots=True)
class TypeNode:
    """A parsed type: ``Array(String)`` is ``TypeNode("Array", (TypeNode("String"),))``.

    ``params`` hold nested types, string literals (a timezone), ints (a precision), and for
    enums ``(name, value)`` pairs and for named tuples ``(name, TypeNode)`` pairs.
    """

    name: str
    params: tuple[Any, ...] = ()

    @property
    def inner(self) -> TypeNode:
        node = self.params[0]
        assert isinstance(node, TypeNode)
        return node


# --- the type parser ------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>-?\d+)|(?P<str>'(?:[^'\\]|\\.)*')"
    r"|(?P<punct>[(),=]))"
)


def parse_type(text: str) -> TypeNode:
    """Parse a ClickHouse type name; raises :class:`UnsupportedType` when it cannot."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise UnsupportedType(f"cannot parse type {text!r} at {pos}")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    parser = _TypeParser(tokens, text)
    node = parser.type()
    if parser.i != len(tokens):
        raise UnsupportedType(f"cannot parse type {text!r}: trailing input")
    return node


class _TypeParser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens = tokens
        self.text = text
        self.i = 0

    def peek(self, ahead: int = 0) -> tuple[str, str]:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        k, v = self.peek()
        if k != kind or (value is not None and v != value):
            raise UnsupportedType(f"cannot parse type {self.text!r}: unexpected {v!r}")
        self.i += 1
        return v

    def type(self) -> TypeNode:
        name = self.take("ident")
        params: list[Any] = []
        if self.peek() == ("punct", "("):
            self.i += 1
            while self.peek() != ("punct", ")"):
                params.append(self.param())
                if self.peek() == ("punct", ","):
                    self.i += 1
            self.take("punct", ")")
        return TypeNode(name, tuple(params))

    def param(self) -> Any:
        kind, value = self.peek()
        if kind == "str":
            self.i += 1
            literal = _unquote(value)
            if self.peek() == ("punct", "="):
                self.i += 1
                return (literal, int(self.take("num")))
            return literal
        if kind == "num":
            self.i += 1
            return int(value)
        if kind == "ident" and self.peek(1)[0] == "ident":  # named tuple element: `a String`
            self.i += 1
            return (value, self.type())
        return self.type()


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: m.group(1), body)


# --- RowBinaryWithNamesAndTypes (chDB results) ------------------------------------------------

_Reader = Callable[[bytes, int], tuple[Any, int]]


def _read_varuint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = _read_varuint(buf, pos)
    end = pos + size
    return buf[pos:end], end


_FIXED = {
    "UInt8": "<B",
    "UInt16": "<H",
    "UInt32": "<I",
    "UInt64": "<Q",
    "Int8": "<b",
    "Int16": "<h",
    "Int32": "<i",
    "Int64": "<q",
    "Float32": "<f",
    "Float64": "<d",
}
_WIDE_INTS = {"UInt128": (16, False), "UInt256": (32, False), "Int128": (16, True),
              "Int256": (32, True)}  # fmt: skip


def _fixed_reader(fmt: str) -> _Reader:
    unpack = struct.Struct(fmt).unpack_from
    size = struct.calcsize(fmt)

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        return unpack(buf, pos)[0], pos + size

    return read


def _reader(node: TypeNode) -> _Reader:
    name = node.name
    if name in _FIXED:
        return _fixed_reader(_FIXED[name])
    if name in _WIDE_INTS:
        width, signed = _WIDE_INTS[name]

        def read_wide(buf: bytes, pos: int) -> tuple[Any, int]:
            end = pos + width
            return int.from_bytes(buf[pos:end], "little", signed=signed), end

        return read_wide
    if name == "Bool":
        return lambda buf, pos: (buf[pos] != 0, pos + 1)
    if name == "String":
        return _read_bytes
    if name == "FixedString":
        width = int(node.params[0])
        return lambda buf, pos: (buf[pos : pos + width], pos + width)
    if name == "Date":
        read_u16 = _fixed_reader("<H")

        def read_date(buf: bytes, pos: int) -> tuple[Any, int]:
            days, pos = read_u16(buf, pos)
            return _EPOCH_DATE + timedelta(days=days), pos

        return read_date
    if name == "Date32":
        read_i32 = _fixed_reader("<i")

        def read_date32(buf: bytes, pos: int) -> tuple[Any, int]:
            days, pos = read_i32(buf, pos)
            return _EPOCH_DATE + timedelta(days=days), pos

        return read_date32
    if name == "DateTime":
        read_u32 = _fixed_reader("<I")

        def read_datetime(buf: bytes, pos: int) -> tuple[Any, int]:
            seconds, pos = read_u32(buf, pos)
            return datetime.fromtimestamp(seconds, UTC), pos

        return read_datetime
    if name == "DateTime64":
        scale = 10 ** int(node.params[0])
        read_i64 = _fixed_reader("<q")

        def read_datetime64(buf: bytes, pos: int) -> tuple[Any, int]:
            ticks, pos = read_i64(buf, pos)
            seconds, frac = divmod(ticks, scale)
            micros = frac * 1_000_000 // scale
            return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros), pos

        return read_datetime64
    if name == "UUID":
        unpack_pair = struct.Struct("<QQ").unpack_from

        def read_uuid(buf: bytes, pos: int) -> tuple[Any, int]:
            high, low = unpack_pair(buf, pos)
            return UUID(int=(high << 64) | low), pos + 16

        return read_uuid
    if name in ("Enum8", "Enum16"):
        read_code = _fixed_reader("<b" if name == "Enum8" else "<h")
        names = {value: label for label, value in node.params}

        def read_enum(buf: bytes, pos: int) -> tuple[Any, int]:
            code, pos = read_code(buf, pos)
            return names.get(code, str(code)), pos

        return read_enum
    if name == "LowCardinality":
        return _reader(node.inner)
    if name == "Nullable":
        if node.inner.name == "Nothing":
            return lambda buf, pos: (None, pos + 1)
        read_inner = _reader(node.inner)

        def read_nullable(buf: bytes, pos: int) -> tuple[Any, int]:
            if buf[pos]:
                return None, pos + 1
            return read_inner(buf, pos + 1)

        return read_nullable
    if name == "Array":
        read_item = _reader(node.inner)

        def read_array(buf: bytes, pos: int) -> tuple[Any, int]:
            count, pos = _read_varuint(buf, pos)
            items = []
            for _ in range(count):
                item, pos = read_item(buf, pos)
                items.append(item)
            return items, pos

        return read_array
    if name == "Tuple":
        readers = [_reader(p[1] if isinstance(p, tuple) else p) for p in node.params]

        def read_tuple(buf: bytes, pos: int) -> tuple[Any, int]:
            items = []
            for read_item in readers:
                item, pos = read_item(buf, pos)
                items.append(item)
            return tuple(items), pos

        return read_tuple
    if name == "Map":
        read_key = _reader(node.params[0])
        read_value = _reader(node.params[1])

        def read_map(buf: bytes, pos: int) -> tuple[Any, int]:
            count, pos = _read_varuint(buf, pos)
            result = {}
            for _ in range(count):
                key, pos = read_key(buf, pos)
                result[key], pos = read_value(buf, pos)
            return result, pos

        return read_map
    raise UnsupportedType(f"{_type_text(node)} is not decoded")


def decode_rowbinary(buf: bytes) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    """``(names, types, rows)`` from ``RowBinaryWithNamesAndTypes`` bytes (b'' for no result)."""
    if not buf:
        return [], [], []
    count, pos = _read_varuint(buf, 0)
    names: list[str] = []
    types: list[str] = []
    for _ in range(count):
        raw, pos = _read_bytes(buf, pos)
        names.append(raw.decode("utf-8", "replace"))
    for _ in range(count):
        raw, pos = _read_bytes(buf, pos)
        types.append(raw.decode("utf-8"))
    readers = []
    for column, type_text in zip(names, types, strict=True):
        try:
            readers.append(_reader(parse_type(type_text)))
        except UnsupportedType as e:
            raise UnsupportedType(f"result column {column!r} has type {type_text}: {e}") from e
    rows: list[tuple[Any, ...]] = []
    end = len(buf)
    while pos < end:
        row = []
        for read in readers:
            value, pos = read(buf, pos)
            row.append(value)
        rows.append(tuple(row))
    return names, types, rows


# --- Native blocks (chDB inserts) -------------------------------------------------------------

_SMALL_VARUINT = [bytes([i]) for i in range(128)]


def _varuint(n: int) -> bytes:
    if n < 128:
        return _SMALL_VARUINT[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"expected str or bytes, got {type(value).__name__}")


def _encode_column(node: TypeNode, values: Sequence[Any]) -> bytes:
    name = node.name
    if name in _FIXED:
        return struct.pack(f"<{len(values)}{_FIXED[name][1]}", *values)
    if name == "Bool":
        return struct.pack(f"<{len(values)}B", *[1 if v else 0 for v in values])
    if name == "String":
        parts = []
        for value in values:
            raw = _as_bytes(value)
            parts.append(_varuint(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    if name == "FixedString":
        width = int(node.params[0])
        out = []
        for value in values:
            raw = _as_bytes(value)
            if len(raw) > width:
                raise ValueError(f"{len(raw)} bytes do not fit FixedString({width})")
            out.append(raw.ljust(width, b"\0"))
        return b"".join(out)
    if name == "DateTime":
        return struct.pack(f"<{len(values)}I", *values)
    if name == "Date":
        days = [v if isinstance(v, int) else (v - _EPOCH_DATE).days for v in values]
        return struct.pack(f"<{len(values)}H", *days)
    if name == "Array":
        lengths = [len(v) for v in values]
        offsets = struct.pack(f"<{len(values)}Q", *accumulate(lengths))
        return offsets + _encode_column(node.inner, list(chain.from_iterable(values)))
    if name == "LowCardinality":
        raise UnsupportedType("LowCardinality columns are not written (not in the schema)")
    raise UnsupportedType(f"{_type_text(node)} columns are not written")


def encode_native_block(
    columns: Sequence[tuple[str, str, Sequence[Any]]],
) -> bytes:
    """One ``Native`` block from ``(name, type, values)`` triples of equal length.

    DateTime values must already be ints (epoch seconds). Raises :class:`UnsupportedType` for a
    type it cannot write, and ``TypeError``/``ValueError``/``struct.error`` naming the column for
    a value that does not fit its type.
    """
    rows = len(columns[0][2]) if columns else 0
    parts = [_varuint(len(columns)), _varuint(rows)]
    for name, type_text, values in columns:
        raw_name = name.encode()
        raw_type = type_text.encode()
        parts += [_varuint(len(raw_name)), raw_name, _varuint(len(raw_type)), raw_type]
        try:
            parts.append(_encode_column(parse_type(type_text), values))
        except (TypeError, ValueError, struct.error, OverflowError) as e:
            raise type(e)(f"column {name!r} ({type_text}): {e}") from e
    return b"".join(parts)


# --- results: one shape for both backends -----------------------------------------------------

_Convert = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _decode_text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _converter(node: TypeNode, *, raw: bool, server_tz: ZoneInfo) -> _Convert:
    name = node.name
    if name in ("String", "FixedString"):
        return _identity if raw else _decode_text
    if name in ("LowCardinality", "Nullable"):
        # Every converter here passes None through, so NULLs need no branch of their own.
        return _converter(node.inner, raw=raw, server_tz=server_tz)
    if name == "Array":
        item = _converter(node.inner, raw=raw, server_tz=server_tz)
        if item is _identity:
            return lambda v: list(v)
        return lambda v: [item(x) for x in v]
    if name == "Tuple":
        items = [
            _converter(p[1] if isinstance(p, tuple) else p, raw=raw, server_tz=server_tz)
            for p in node.params
        ]
        return lambda v: tuple(c(x) for c, x in zip(items, v, strict=True))
    if name in ("DateTime", "DateTime64"):
        # clickhouse-driver answers naive datetimes in the column's (else the server's) zone.
        zone = server_tz
        tz_param = node.params[-1] if node.params else None
        if isinstance(tz_param, str):
            zone = _zone(tz_param)

        def to_utc(value: Any) -> Any:
            if not isinstance(value, datetime):
                return value
            if value.tzinfo is None:
                value = value.replace(tzinfo=zone)
            return value.astimezone(UTC)

        return to_utc
    if name == "Map":
        key = _converter(node.params[0], raw=raw, server_tz=server_tz)
        val = _converter(node.params[1], raw=raw, server_tz=server_tz)
        return lambda v: {key(k): val(x) for k, x in dict(v).items()}
    return _identity


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def result_converter(
    names: Sequence[str],
    types: Sequence[str],
    *,
    bytes_columns: Collection[str],
    server_tz: str = "UTC",
) -> Callable[[Sequence[tuple[Any, ...]]], list[tuple[Any, ...]]]:
    """A function normalising raw result rows (strings as ``bytes``) to ``execute``'s promise:

    ``String`` → ``str`` (UTF-8, undecodable bytes replaced by U+FFFD) except for the columns
    named in ``bytes_columns``, which stay ``bytes``, byte-exact; ``DateTime`` → aware UTC
    ``datetime``; arrays → ``list``; tuples → ``tuple``; numbers as they are.
    """
    zone = _zone(server_tz)
    converters: list[Callable[[Sequence[Any]], Sequence[Any]] | None] = []
    for name, type_text in zip(names, types, strict=True):
        try:
            node = parse_type(type_text)
        except UnsupportedType:
            converters.append(None)
            continue
        converters.append(_column_converter(node, raw=name in bytes_columns, server_tz=zone))
    if all(c is None for c in converters):
        return lambda rows: [tuple(r) for r in rows]

    def convert(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        # Column by column: one tight comprehension per column instead of a call per value,
        # which is what bounds reading large results (replay streams whole windows).
        if not rows:
            return []
        columns = list(zip(*rows, strict=True))
        converted = [
            col if c is None else c(col) for c, col in zip(converters, columns, strict=True)
        ]
        return list(zip(*converted, strict=True))

    return convert


def _column_converter(
    node: TypeNode, *, raw: bool, server_tz: ZoneInfo
) -> Callable[[Sequence[Any]], Sequence[Any]] | None:
    """A whole column's conversion (``None``: as it is); the common text shapes inlined."""
    if not raw and node.name in ("String", "FixedString"):
        return lambda col: [v.decode("utf-8", "replace") if type(v) is bytes else v for v in col]
    if (
        not raw
        and node.name == "Array"
        and isinstance(node.params[0], TypeNode)
        and node.params[0].name in ("String", "FixedString")
    ):
        return lambda col: [
            [x.decode("utf-8", "replace") if type(x) is bytes else x for x in v] for v in col
        ]
    one = _converter(node, raw=raw, server_tz=server_tz)
    if one is _identity:
        return None
    return lambda col: [one(v) for v in col]


def _type_text(node: TypeNode) -> str:
    if not node.params:
        return node.name
    return f"{node.name}({', '.join(_param_text(p) for p in node.params)})"


def _param_text(param: Any) -> str:
    if isinstance(param, TypeNode):
        return _type_text(param)
    if isinstance(param, tuple):
        first, second = param
        return (
            f"{first} {_param_text(second)}"
            if isinstance(second, TypeNode)
            else (f"'{first}' = {second}")
        )
    return repr(param) if isinstance(param, str) else str(param)
