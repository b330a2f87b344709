"""Subscription filters: the CloudEvents Subscriptions API dialects, their errors and round-trip."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from runtime._errors import InvalidFilter
from runtime._events import AttributeValue, CloudEvent
from runtime._filters import MATCH_ALL, MAX_DEPTH, EventFilter, attribute_string, compile_filters

DIALECTS = "exact, prefix, suffix, all, any, not"
RULE = "CloudEvents attribute names are 1-20 lower-case letters or digits"


def event(**extra: AttributeValue) -> CloudEvent:
    attributes: dict[str, AttributeValue] = {
        "specversion": "1.0",
        "id": "42",
        "source": "/orders/eu",
        "type": "com.example.order.created",
        "subject": "invoice.pdf",
    }
    attributes.update(extra)
    return CloudEvent(attributes, b"{}")


MATCHES: list[tuple[Any, dict[str, AttributeValue], bool]] = [
    # no filters
    (None, {}, True),
    ([], {}, True),
    # exact: every named attribute equals its value; case-sensitive
    ([{"exact": {"type": "com.example.order.created"}}], {}, True),
    ([{"exact": {"type": "com.example.order"}}], {}, False),
    ([{"exact": {"type": "COM.example.order.created"}}], {}, False),
    ([{"exact": {"type": "com.example.order.created", "source": "/orders/eu"}}], {}, True),
    ([{"exact": {"type": "com.example.order.created", "source": "/orders/us"}}], {}, False),
    # an attribute the event lacks never matches
    ([{"exact": {"region": "eu"}}], {}, False),
    ([{"prefix": {"region": "e"}}], {}, False),
    ([{"suffix": {"region": "u"}}], {}, False),
    ([{"exact": {"region": "eu"}}], {"region": "eu"}, True),
    # prefix / suffix
    ([{"prefix": {"type": "com.example."}}], {}, True),
    ([{"prefix": {"type": "com.other."}}], {}, False),
    ([{"prefix": {"type": "com.example.", "source": "/orders/"}}], {}, True),
    ([{"prefix": {"type": "com.example.", "source": "/billing/"}}], {}, False),
    ([{"suffix": {"subject": ".pdf"}}], {}, True),
    ([{"suffix": {"subject": ".PDF"}}], {}, False),
    ([{"suffix": {"type": ".created", "subject": ".jpg"}}], {}, False),
    # values compare as strings: integers in decimal, booleans lower-case
    ([{"exact": {"priority": "5"}}], {"priority": 5}, True),
    ([{"exact": {"priority": "05"}}], {"priority": 5}, False),
    ([{"prefix": {"priority": "1"}}], {"priority": 123}, True),
    ([{"exact": {"urgent": "true"}}], {"urgent": True}, True),
    ([{"exact": {"urgent": "True"}}], {"urgent": True}, False),
    ([{"exact": {"urgent": "false"}}], {"urgent": False}, True),
    ([{"exact": {"urgent": "true"}}], {"urgent": False}, False),
    ([{"suffix": {"urgent": "rue"}}], {"urgent": True}, True),
    # top-level filters are ANDed
    ([{"prefix": {"type": "com.example."}}, {"suffix": {"subject": ".pdf"}}], {}, True),
    ([{"prefix": {"type": "com.example."}}, {"suffix": {"subject": ".jpg"}}], {}, False),
    # all / any / not
    ([{"all": [{"exact": {"id": "42"}}, {"prefix": {"source": "/orders"}}]}], {}, True),
    ([{"all": [{"exact": {"id": "42"}}, {"prefix": {"source": "/billing"}}]}], {}, False),
    ([{"any": [{"exact": {"id": "1"}}, {"prefix": {"source": "/orders"}}]}], {}, True),
    ([{"any": [{"exact": {"id": "1"}}, {"prefix": {"source": "/billing"}}]}], {}, False),
    ([{"not": {"exact": {"id": "42"}}}], {}, False),
    ([{"not": {"exact": {"id": "1"}}}], {}, True),
    ([{"not": {"exact": {"region": "eu"}}}], {}, True),
    ([{"not": {"not": {"exact": {"id": "42"}}}}], {}, True),
    (
        [
            {
                "any": [
                    {
                        "all": [
                            {"exact": {"region": "eu"}},
                            {"not": {"suffix": {"subject": ".tmp"}}},
                        ]
                    },
                    {"exact": {"urgent": "true"}},
                ]
            }
        ],
        {"region": "eu"},
        True,
    ),
    (
        [
            {
                "any": [
                    {"all": [{"exact": {"region": "eu"}}, {"not": {"suffix": {"subject": ".pdf"}}}]}
                ]
            }
        ],
        {"region": "eu"},
        False,
    ),
    # a tuple is as good as a list for Python callers
    (({"exact": {"id": "42"}},), {}, True),
]


@pytest.mark.parametrize(("raw", "extra", "expected"), MATCHES)
def test_filter_matching(raw: Any, extra: dict[str, AttributeValue], expected: bool) -> None:
    assert compile_filters(raw).matches(event(**extra)) is expected


VALID = [raw for raw, _, _ in MATCHES if raw]


@pytest.mark.parametrize("raw", VALID)
def test_round_trip_through_json(raw: Any) -> None:
    compiled = compile_filters(raw)
    canonical = compiled.to_json()
    reloaded = compile_filters(json.loads(json.dumps(canonical)))
    assert reloaded == compiled
    assert reloaded.to_json() == canonical
    assert hash(reloaded) == hash(compiled)
    for _, extra, _ in MATCHES:
        assert reloaded.matches(event(**extra)) is compiled.matches(event(**extra))


def test_to_json_is_canonical() -> None:
    compiled = compile_filters(
        [
            {"exact": {"type": "t", "source": "/s", "id": "1"}},
            {
                "not": {
                    "any": [
                        {"suffix": {"subject": "x", "id": "2"}},
                        {"prefix": {"b": "1", "a": "2"}},
                    ]
                }
            },
        ]
    )
    text = json.dumps(compiled.to_json())
    assert text == (
        '[{"exact": {"id": "1", "source": "/s", "type": "t"}}, '
        '{"not": {"any": [{"suffix": {"id": "2", "subject": "x"}}, '
        '{"prefix": {"a": "2", "b": "1"}}]}}]'
    )
    same = compile_filters(
        [
            {"exact": {"id": "1", "type": "t", "source": "/s"}},
            {
                "not": {
                    "any": [
                        {"suffix": {"id": "2", "subject": "x"}},
                        {"prefix": {"a": "2", "b": "1"}},
                    ]
                }
            },
        ]
    )
    assert same == compiled


def test_order_of_filters_is_kept() -> None:
    raw = [{"exact": {"id": "1"}}, {"exact": {"id": "2"}}]
    assert compile_filters(raw).to_json() == raw
    assert compile_filters(raw) != compile_filters(raw[::-1])


def test_dialects_are_distinct_even_with_the_same_attributes() -> None:
    exact = compile_filters([{"exact": {"id": "4"}}])
    prefix = compile_filters([{"prefix": {"id": "4"}}])
    assert exact != prefix
    assert not exact.matches(event())
    assert prefix.matches(event())


def test_no_filters_match_everything() -> None:
    assert compile_filters(None) is MATCH_ALL
    assert compile_filters([]) == MATCH_ALL
    assert MATCH_ALL.matches_everything
    assert MATCH_ALL.to_json() == []
    assert not compile_filters([{"exact": {"id": "1"}}]).matches_everything


def test_compiled_filters_are_immutable_and_to_json_returns_a_copy() -> None:
    compiled = compile_filters([{"exact": {"id": "42"}}])
    dumped = compiled.to_json()
    dumped[0]["exact"]["id"] = "other"
    dumped.append({"exact": {"id": "x"}})
    assert compiled.to_json() == [{"exact": {"id": "42"}}]
    assert compiled.matches(event())
    with pytest.raises(dataclasses.FrozenInstanceError):
        compiled._filters = ()  # type: ignore[misc]
    assert isinstance(compiled, EventFilter)


@pytest.mark.parametrize(
    ("value", "text"),
    [("x", "x"), ("", ""), (True, "true"), (False, "false"), (0, "0"), (-7, "-7")],
)
def test_attribute_string(value: AttributeValue, text: str) -> None:
    assert attribute_string(value) == text


# --------------------------------------------------------------------------------------------
# Errors: every message starts with the path of the offending part
# --------------------------------------------------------------------------------------------

EXAMPLE = '{"exact": {"type": "com.example.created"}}'
ONE_KEY = f"a filter object has exactly one dialect key ({DIALECTS}), got"
NOT_A_FILTER = f"a filter must be an object with exactly one dialect key, e.g. {EXAMPLE}, got"

ERRORS: list[tuple[Any, str]] = [
    # the filters value itself
    (
        {"exact": {"type": "t"}},
        f"filters: must be an array of filter objects, got an object; wrap it in [...], "
        f"e.g. [{EXAMPLE}]",
    ),
    ("type=t", f"filters: must be an array of filter objects, e.g. [{EXAMPLE}], got a string"),
    (5, f"filters: must be an array of filter objects, e.g. [{EXAMPLE}], got a number"),
    (True, f"filters: must be an array of filter objects, e.g. [{EXAMPLE}], got a boolean"),
    # filter objects
    ([{"exact": {"id": "1"}}, "exact"], f"filters[1]: {NOT_A_FILTER} a string"),
    ([None], f"filters[0]: {NOT_A_FILTER} null"),
    ([[{"exact": {"id": "1"}}]], f"filters[0]: {NOT_A_FILTER} an array"),
    ([{}], f"filters[0]: {ONE_KEY} empty object"),
    (
        [{"exact": {"id": "1"}, "prefix": {"type": "t"}}],
        f"filters[0]: {ONE_KEY} 2 keys ('exact', 'prefix'); combine filters with "
        '{"all": [...]}',
    ),
    # dialects
    (
        [{"exact": {"id": "1"}}, {"any": [{"regex": "a.*"}]}],
        f"filters[1].any[0]: unknown dialect 'regex'; use one of {DIALECTS}",
    ),
    ([{"Exact": {"id": "1"}}], f"filters[0]: unknown dialect 'Exact'; use one of {DIALECTS}"),
    (
        [{"sql": "source LIKE '%cloudevents%'"}],
        f"filters[0].sql: the 'sql' dialect (CloudEvents SQL) is not supported; "
        f"use one of {DIALECTS}",
    ),
    (
        [{"not": {"sql": "true"}}],
        f"filters[0].not.sql: the 'sql' dialect (CloudEvents SQL) is not supported; "
        f"use one of {DIALECTS}",
    ),
    # exact / prefix / suffix bodies
    (
        [{"exact": {"type": 5}}],
        "filters[0].exact: value for 'type' must be a string, got 5; write it as a string: \"5\"",
    ),
    (
        [{"prefix": {"urgent": True}}],
        "filters[0].prefix: value for 'urgent' must be a string, got true; "
        'write it as a string: "true"',
    ),
    (
        [{"suffix": {"type": None}}],
        "filters[0].suffix: value for 'type' must be a string, got null",
    ),
    (
        [{"exact": {"type": ["a"]}}],
        "filters[0].exact: value for 'type' must be a string, got [\"a\"]",
    ),
    ([{"exact": {"type": 1.5}}], "filters[0].exact: value for 'type' must be a string, got 1.5"),
    (
        [{"prefix": {"type": ""}}],
        "filters[0].prefix: value for 'type' is empty; the spec requires a non-empty string",
    ),
    (
        [{"exact": {}}],
        'filters[0].exact: empty object; name at least one attribute, e.g. {"exact": '
        '{"type": "com.example."}}',
    ),
    (
        [{"all": [{"suffix": {}}]}],
        'filters[0].all[0].suffix: empty object; name at least one attribute, e.g. {"suffix": '
        '{"type": "com.example."}}',
    ),
    (
        [{"exact": "com.example.created"}],
        'filters[0].exact: must be an object of attribute name to string value, e.g. {"exact": '
        '{"type": "com.example."}}, got a string',
    ),
    (
        [{"prefix": [{"type": "x"}]}],
        'filters[0].prefix: must be an object of attribute name to string value, e.g. {"prefix": '
        '{"type": "com.example."}}, got an array',
    ),
    # attribute names
    (
        [{"exact": {"Type": "t"}}],
        f"filters[0].exact: attribute name 'Type' is not lower-case; {RULE}: use 'type'",
    ),
    (
        [{"prefix": {"PartitionKey": "k"}}],
        f"filters[0].prefix: attribute name 'PartitionKey' is not lower-case; {RULE}: "
        "use 'partitionkey'",
    ),
    ([{"exact": {"": "t"}}], f"filters[0].exact: attribute name is empty; {RULE}"),
    (
        [{"exact": {"data.id": "t"}}],
        f"filters[0].exact: attribute name 'data.id' is not valid; {RULE}, "
        "e.g. 'type' or 'partitionkey'",
    ),
    (
        [{"exact": {"trace_id": "t"}}],
        f"filters[0].exact: attribute name 'trace_id' is not valid; {RULE}, "
        "e.g. 'type' or 'partitionkey'",
    ),
    (
        [{"exact": {"ünicode": "t"}}],
        f"filters[0].exact: attribute name 'ünicode' is not valid; {RULE}, "
        "e.g. 'type' or 'partitionkey'",
    ),
    (
        [{"exact": {"a" * 21: "t"}}],
        f"filters[0].exact: attribute name '{'a' * 21}' is longer than 20 characters; {RULE}",
    ),
    ([{"exact": {5: "t"}}], f"filters[0].exact: attribute name 5 is not a string; {RULE}"),
    # all / any
    (
        [{"all": {"exact": {"id": "1"}}}],
        f'filters[0].all: must be an array of filter objects, e.g. {{"all": [{EXAMPLE}]}}, '
        "got an object",
    ),
    (
        [{"any": "exact"}],
        f'filters[0].any: must be an array of filter objects, e.g. {{"any": [{EXAMPLE}]}}, '
        "got a string",
    ),
    ([{"any": []}], "filters[0].any: empty array; give at least one filter object"),
    ([{"all": []}], "filters[0].all: empty array; give at least one filter object"),
    (
        [
            {
                "all": [
                    {"exact": {"id": "1"}},
                    {"any": [{"exact": {"id": "2"}}, {"exact": {"id": 3}}]},
                ]
            }
        ],
        "filters[0].all[1].any[1].exact: value for 'id' must be a string, got 3; write it as a "
        'string: "3"',
    ),
    ([{"any": [{"exact": {"id": "1"}}, 7]}], f"filters[0].any[1]: {NOT_A_FILTER} a number"),
    # not
    (
        [{"not": [{"exact": {"id": "1"}}]}],
        "filters[0].not: must be one filter object, got an array; to negate several filters "
        'wrap them: {"not": {"any": [...]}} (none match) or {"not": {"all": [...]}} '
        "(not all match)",
    ),
    ([{"not": {}}], f"filters[0].not: {ONE_KEY} empty object"),
    ([{"not": None}], f"filters[0].not: {NOT_A_FILTER} null"),
    ([{"not": {"regex": "x"}}], f"filters[0].not: unknown dialect 'regex'; use one of {DIALECTS}"),
    (
        [{"not": {"not": {"exact": {"Id": "1"}}}}],
        f"filters[0].not.not.exact: attribute name 'Id' is not lower-case; {RULE}: use 'id'",
    ),
]


@pytest.mark.parametrize(("raw", "message"), ERRORS)
def test_invalid_filters_name_the_offending_part(raw: Any, message: str) -> None:
    with pytest.raises(InvalidFilter) as info:
        compile_filters(raw)
    assert str(info.value) == message


def test_nesting_is_bounded() -> None:
    def nested(depth: int) -> dict[str, Any]:
        node: dict[str, Any] = {"exact": {"id": "42"}}
        for _ in range(depth):
            node = {"not": node}
        return node

    # MAX_DEPTH levels are fine (the top-level filter object is level 1) ...
    deepest = compile_filters([nested(MAX_DEPTH - 1)])
    assert deepest.matches(event()) is ((MAX_DEPTH - 1) % 2 == 0)  # an even number of nots
    assert compile_filters(deepest.to_json()) == deepest
    # ... one more is refused, long before Python's recursion limit could be reached.
    with pytest.raises(InvalidFilter) as info:
        compile_filters([nested(10_000)])
    assert str(info.value) == (
        "filters[0]" + ".not" * MAX_DEPTH + f": filters nest more than {MAX_DEPTH} levels deep; "
        "flatten them (all and any take arrays)"
    )


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidFilter) as info:
        compile_filters([{"exact": {"type": list(range(100))}}])
    shown = json.dumps(list(range(100)))[:60]
    assert str(info.value) == (
        f"filters[0].exact: value for 'type' must be a string, got {shown}..."
    )
