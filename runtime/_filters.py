"""Subscription filters: the CloudEvents Subscriptions API filter dialects.

A subscription's ``"filters"`` is a JSON array of filter objects; an event is delivered only if
every one of them matches (an absent or empty array matches everything). Each filter object has
exactly one key, its dialect:

* ``{"exact": {"type": "com.example.created"}}`` - every named attribute equals its value;
* ``{"prefix": {"source": "/orders/"}}`` - every named attribute starts with its value;
* ``{"suffix": {"subject": ".jpg"}}`` - every named attribute ends with its value;
* ``{"all": [filter, ...]}`` - every nested filter matches (at least one is required);
* ``{"any": [filter, ...]}`` - at least one nested filter matches (at least one is required);
* ``{"not": filter}`` - the single nested filter does not match.

Comparisons are case-sensitive on the attribute's string form: integers as decimal digits,
booleans as ``"true"``/``"false"`` (the CloudEvents canonical string encoding). An attribute the
event does not carry never matches, so ``{"not": {"exact": {"x": "1"}}}`` does match events
without ``x``. Attribute names and values must be non-empty strings, names are CloudEvents
attribute names (lower-case letters and digits, at most 20 characters).

The optional ``sql`` dialect (CloudEvents SQL) is not implemented, and the spec requires a
subscription manager to reject a dialect it does not support rather than ignore it, so it is
rejected with an error naming the supported dialects.

Subscriptions arrive from users over the API, so every error says where it is by a path such as
``filters[1].any[0]`` and what to write instead. Compiled filters are immutable trees that
`EventFilter.to_json` turns back into canonical JSON (attribute maps sorted by name), which is how
subscriptions are persisted in the store and reloaded by other runtime instances.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from runtime._errors import InvalidFilter
from runtime._events import AttributeValue, CloudEvent

DIALECTS: Final = ("exact", "prefix", "suffix", "all", "any", "not")
MAX_ATTRIBUTE_NAME_LENGTH: Final = 20
MAX_DEPTH: Final = 32
"""Nesting bound for all/any/not, so a hostile subscription cannot exhaust the stack."""

_DIALECT_LIST: Final = ", ".join(DIALECTS)
_ATTRIBUTE_NAME_RE: Final = re.compile(rf"[a-z0-9]{{1,{MAX_ATTRIBUTE_NAME_LENGTH}}}")
_EXAMPLE: Final = '{"exact": {"type": "com.example.created"}}'
_SHOW_LIMIT: Final = 60


def _show(value: object) -> str:
    """A user value for error messages, kept short: strings quoted as 'x', the rest as JSON."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= _SHOW_LIMIT else text[:_SHOW_LIMIT] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def attribute_string(value: AttributeValue) -> str:
    """The string an attribute value is compared as: booleans lower-case, integers in decimal."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------------------------
# Compiled filter nodes
# --------------------------------------------------------------------------------------------


class _Node:
    """One compiled filter expression."""

    __slots__ = ()

    def matches(self, event: CloudEvent) -> bool:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class _AttributeNode(_Node):
    """exact/prefix/suffix: (name, value) pairs sorted by name, all of which must hold."""

    dialect: ClassVar[str]
    pairs: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {self.dialect: dict(self.pairs)}


@dataclass(frozen=True, slots=True)
class _Exact(_AttributeNode):
    dialect: ClassVar[str] = "exact"

    def matches(self, event: CloudEvent) -> bool:
        attributes = event.attributes
        for name, wanted in self.pairs:
            value = attributes.get(name)
            if value is None or attribute_string(value) != wanted:
                return False
        return True


@dataclass(frozen=True, slots=True)
class _Prefix(_AttributeNode):
    dialect: ClassVar[str] = "prefix"

    def matches(self, event: CloudEvent) -> bool:
        attributes = event.attributes
        for name, wanted in self.pairs:
            value = attributes.get(name)
            if value is None or not attribute_string(value).startswith(wanted):
                return False
        return True


@dataclass(frozen=True, slots=True)
class _Suffix(_AttributeNode):
    dialect: ClassVar[str] = "suffix"

    def matches(self, event: CloudEvent) -> bool:
        attributes = event.attributes
        for name, wanted in self.pairs:
            value = attributes.get(name)
            if value is None or not attribute_string(value).endswith(wanted):
                return False
        return True


@dataclass(frozen=True, slots=True)
class _All(_Node):
    items: tuple[_Node, ...]

    def matches(self, event: CloudEvent) -> bool:
        return all(item.matches(event) for item in self.items)

    def to_json(self) -> dict[str, Any]:
        return {"all": [item.to_json() for item in self.items]}


@dataclass(frozen=True, slots=True)
class _Any(_Node):
    items: tuple[_Node, ...]

    def matches(self, event: CloudEvent) -> bool:
        return any(item.matches(event) for item in self.items)

    def to_json(self) -> dict[str, Any]:
        return {"any": [item.to_json() for item in self.items]}


@dataclass(frozen=True, slots=True)
class _Not(_Node):
    item: _Node

    def matches(self, event: CloudEvent) -> bool:
        return not self.item.matches(event)

    def to_json(self) -> dict[str, Any]:
        return {"not": self.item.to_json()}


_ATTRIBUTE_NODES: Final[dict[str, type[_AttributeNode]]] = {
    "exact": _Exact,
    "prefix": _Prefix,
    "suffix": _Suffix,
}


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The compiled ``"filters"`` of a subscription: all of its filters must match.

    Immutable and comparable: ``compile_filters(f.to_json()) == f``. Build it with
    `compile_filters`; `MATCH_ALL` is the filter of a subscription without filters.
    """

    _filters: tuple[_Node, ...]

    def matches(self, event: CloudEvent) -> bool:
        """Whether `event` passes every filter (always true when there are none)."""
        return all(item.matches(event) for item in self._filters)

    @property
    def matches_everything(self) -> bool:
        """True when there are no filters, so delivery can skip evaluating them."""
        return not self._filters

    def to_json(self) -> list[dict[str, Any]]:
        """The canonical JSON ``"filters"`` array; a fresh object on every call."""
        return [item.to_json() for item in self._filters]


MATCH_ALL: Final = EventFilter(())


# --------------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------------


def _compile_attributes(dialect: str, raw: object, path: str) -> _AttributeNode:
    where = f"{path}.{dialect}"
    if not isinstance(raw, Mapping):
        raise InvalidFilter(
            f"{where}: must be an object of attribute name to string value, e.g. "
            f'{{"{dialect}": {{"type": "com.example."}}}}, got {_json_type(raw)}'
        )
    if not raw:
        raise InvalidFilter(
            f"{where}: empty object; name at least one attribute, e.g. "
            f'{{"{dialect}": {{"type": "com.example."}}}}'
        )
    pairs: list[tuple[str, str]] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not _ATTRIBUTE_NAME_RE.fullmatch(name):
            raise InvalidFilter(f"{where}: {_bad_attribute_name(name)}")
        if not isinstance(value, str):
            hint = (
                f"; write it as a string: {json.dumps(attribute_string(value))}"
                if isinstance(value, bool | int)
                else ""
            )
            raise InvalidFilter(
                f"{where}: value for {name!r} must be a string, got {_show(value)}{hint}"
            )
        if value == "":
            raise InvalidFilter(
                f"{where}: value for {name!r} is empty; the spec requires a non-empty string"
            )
        pairs.append((name, value))
    pairs.sort()
    return _ATTRIBUTE_NODES[dialect](tuple(pairs))


def _bad_attribute_name(name: object) -> str:
    rule = (
        f"CloudEvents attribute names are 1-{MAX_ATTRIBUTE_NAME_LENGTH} lower-case letters "
        "or digits"
    )
    if not isinstance(name, str):
        return f"attribute name {_show(name)} is not a string; {rule}"
    if name == "":
        return f"attribute name is empty; {rule}"
    if _ATTRIBUTE_NAME_RE.fullmatch(name.lower()):
        return f"attribute name {name!r} is not lower-case; {rule}: use {name.lower()!r}"
    if len(name) > MAX_ATTRIBUTE_NAME_LENGTH:
        return (
            f"attribute name {_show(name)} is longer than {MAX_ATTRIBUTE_NAME_LENGTH} "
            f"characters; {rule}"
        )
    return f"attribute name {_show(name)} is not valid; {rule}, e.g. 'type' or 'partitionkey'"


def _compile_list(dialect: str, raw: object, path: str, depth: int) -> _Node:
    where = f"{path}.{dialect}"
    if not isinstance(raw, list | tuple):
        raise InvalidFilter(
            f"{where}: must be an array of filter objects, e.g. "
            f'{{"{dialect}": [{_EXAMPLE}]}}, got {_json_type(raw)}'
        )
    if not raw:
        raise InvalidFilter(f"{where}: empty array; give at least one filter object")
    items = tuple(_compile(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(raw))
    return _All(items) if dialect == "all" else _Any(items)


def _compile_not(raw: object, path: str, depth: int) -> _Node:
    where = f"{path}.not"
    if isinstance(raw, list | tuple):
        raise InvalidFilter(
            f"{where}: must be one filter object, got an array; to negate several filters "
            'wrap them: {"not": {"any": [...]}} (none match) or {"not": {"all": [...]}} '
            "(not all match)"
        )
    return _Not(_compile(raw, where, depth + 1))


def _compile(raw: object, path: str, depth: int) -> _Node:
    if depth > MAX_DEPTH:
        raise InvalidFilter(
            f"{path}: filters nest more than {MAX_DEPTH} levels deep; flatten them "
            "(all and any take arrays)"
        )
    if not isinstance(raw, Mapping):
        raise InvalidFilter(
            f"{path}: a filter must be an object with exactly one dialect key, e.g. "
            f"{_EXAMPLE}, got {_json_type(raw)}"
        )
    if len(raw) != 1:
        if not raw:
            problem = "empty object"
        else:
            keys = ", ".join(_show(key) for key in raw)
            problem = f'{len(raw)} keys ({keys}); combine filters with {{"all": [...]}}'
        raise InvalidFilter(
            f"{path}: a filter object has exactly one dialect key ({_DIALECT_LIST}), got {problem}"
        )
    ((dialect, body),) = raw.items()
    if dialect in _ATTRIBUTE_NODES:
        return _compile_attributes(dialect, body, path)
    if dialect in ("all", "any"):
        return _compile_list(dialect, body, path, depth)
    if dialect == "not":
        return _compile_not(body, path, depth)
    if dialect == "sql":
        raise InvalidFilter(
            f"{path}.sql: the 'sql' dialect (CloudEvents SQL) is not supported; "
            f"use one of {_DIALECT_LIST}"
        )
    raise InvalidFilter(f"{path}: unknown dialect {_show(dialect)}; use one of {_DIALECT_LIST}")


def compile_filters(raw: Any) -> EventFilter:
    """Validate the JSON value of a subscription's ``"filters"`` and compile it.

    `raw` is the parsed JSON: None (absent) or an array of filter objects. Raises InvalidFilter
    whose message starts with the path of the offending part, e.g. ``filters[1].any[0]: ...``.
    """
    if raw is None:
        return MATCH_ALL
    if isinstance(raw, Mapping):
        raise InvalidFilter(
            f"filters: must be an array of filter objects, got an object; wrap it in [...], "
            f"e.g. [{_EXAMPLE}]"
        )
    if not isinstance(raw, list | tuple):
        raise InvalidFilter(
            f"filters: must be an array of filter objects, e.g. [{_EXAMPLE}], got {_json_type(raw)}"
        )
    return EventFilter(tuple(_compile(item, f"filters[{i}]", 1) for i, item in enumerate(raw)))
