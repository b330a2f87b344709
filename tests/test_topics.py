"""Topic names, patterns and dead-letter topics: the naming rules and the pattern matchers."""

from __future__ import annotations

import dataclasses
import random

import pytest

from runtime._errors import InvalidSubscription, InvalidTopic
from runtime._topics import (
    MAX_TOPIC_LENGTH,
    TopicPattern,
    compile_pattern,
    dlq_topic,
    is_internal,
    validate_group,
    validate_pattern,
    validate_topic,
)

TOPIC_RULES = (
    "Topic names are 1-249 characters of dot-separated segments of letters, digits, '_' and '-', "
    "e.g. 'orders.eu.created'"
)
PATTERN_RULES = (
    "Patterns are topic names whose segments may also be '*' (exactly one segment) or '#' "
    "(zero or more segments), e.g. 'orders.*.created' or 'orders.#'"
)
GROUP_RULES = (
    "Group names are 1-200 characters of letters, digits, '_', '-' and '.', e.g. 'billing-service'"
)
WILDCARD_IN_TOPIC = "wildcards belong in subscription patterns, a topic name must be concrete"

VALID_TOPICS = [
    "orders",
    "orders.eu.created",
    "TEST-TOPIC-HTTP-ASYNC",
    "Orders.EU",
    "_dlq.billing",
    "_internal",
    "a.b_c.d-e.0",
    "-",
    "_",
    "x" * MAX_TOPIC_LENGTH,
    ".".join(["a"] * 125),
]


@pytest.mark.parametrize("topic", VALID_TOPICS)
def test_valid_topics_are_returned_unchanged(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("", "it is empty"),
        (".orders", "it starts with '.'"),
        ("orders.", "it ends with '.'"),
        (".", "it starts with '.'"),
        ("orders..created", "segment 2 is empty (two dots in a row)"),
        ("orders.*", f"segment 2 is the wildcard '*'; {WILDCARD_IN_TOPIC}"),
        ("#", f"segment 1 is the wildcard '#'; {WILDCARD_IN_TOPIC}"),
        ("orders*", f"segment 1 ('orders*') contains a wildcard; {WILDCARD_IN_TOPIC}"),
        ("a.b#c", f"segment 2 ('b#c') contains a wildcard; {WILDCARD_IN_TOPIC}"),
        (
            "orders/eu",
            "segment 1 ('orders/eu') contains '/': use '.' to separate segments "
            "('/' would split the topic in URL paths)",
        ),
        (
            "orders:eu",
            "segment 1 ('orders:eu') contains ':': use '.' to separate segments "
            "(':' separates the parts of store keys)",
        ),
        (
            "orders.eu created",
            "segment 2 ('eu created') contains ' ': topic names contain no whitespace",
        ),
        (
            "orders.>",
            "segment 2 ('>') contains '>': use '#' for any number of trailing segments "
            "(NATS '>' is not supported)",
        ),
        (
            "a.+",
            "segment 2 ('+') contains '+': use '*' for exactly one segment "
            "(MQTT '+' is not supported)",
        ),
        (
            "bestellungen.überfällig",
            "segment 2 ('überfällig') contains 'ü': segments use only ASCII letters, digits, "
            "'_' and '-'",
        ),
        (
            "orders\n",
            "segment 1 ('orders\\n') contains '\\n': segments use only ASCII letters, digits, "
            "'_' and '-'",
        ),
    ],
)
def test_invalid_topics_say_which_rule_broke(topic: str, problem: str) -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_topic(topic)
    assert str(info.value) == f"invalid topic {topic!r}: {problem}. {TOPIC_RULES}"


def test_too_long_topic_is_quoted_shortened() -> None:
    topic = "x" * (MAX_TOPIC_LENGTH + 1)
    with pytest.raises(InvalidTopic) as info:
        validate_topic(topic)
    assert str(info.value) == (
        f"invalid topic {'x' * 60!r}... (250 characters): it is longer than 249 characters. "
        f"{TOPIC_RULES}"
    )


@pytest.mark.parametrize(("value", "type_name"), [(5, "int"), (None, "NoneType"), (["a"], "list")])
def test_topic_must_be_a_string(value: object, type_name: str) -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_topic(value)
    assert str(info.value) == (
        f"invalid topic {value!r}: a topic name must be a string, got {type_name}; "
        "use e.g. 'orders.eu.created'"
    )


@pytest.mark.parametrize(
    ("topic", "internal"),
    [("_dlq.billing", True), ("_x", True), ("orders", False), ("orders._x", False)],
)
def test_is_internal(topic: str, internal: bool) -> None:
    assert is_internal(topic) is internal


# --------------------------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        *VALID_TOPICS,
        "*",
        "#",
        "orders.*",
        "orders.#",
        "orders.*.created",
        "#.created",
        "*.#.*",
        "#.#",
    ],
)
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern
    assert compile_pattern(pattern).pattern == pattern


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "it is empty"),
        ("orders.", "it ends with '.'"),
        (".#", "it starts with '.'"),
        ("orders..#", "segment 2 is empty (two dots in a row)"),
        (
            "orders*",
            "segment 1 ('orders*') mixes a wildcard with other characters; '*' and '#' must be "
            "whole segments",
        ),
        (
            "orders.#x",
            "segment 2 ('#x') mixes a wildcard with other characters; '*' and '#' must be "
            "whole segments",
        ),
        (
            "**",
            "segment 1 ('**') mixes a wildcard with other characters; '*' and '#' must be "
            "whole segments",
        ),
        (
            "orders.>",
            "segment 2 ('>') contains '>': use '#' for any number of trailing segments "
            "(NATS '>' is not supported)",
        ),
        (
            "orders/#",
            "segment 1 ('orders/#') mixes a wildcard with other characters; '*' and '#' must be "
            "whole segments",
        ),
        (
            "orders/eu",
            "segment 1 ('orders/eu') contains '/': use '.' to separate segments "
            "('/' would split the topic in URL paths)",
        ),
        ("*." * 125, "it is longer than 249 characters"),
    ],
)
def test_invalid_patterns_say_which_rule_broke(pattern: str, problem: str) -> None:
    for check in (validate_pattern, compile_pattern, TopicPattern):
        with pytest.raises(InvalidTopic) as info:
            check(pattern)
        quoted = repr(pattern) if len(pattern) <= 60 else f"{pattern[:60]!r}... (250 characters)"
        assert str(info.value) == f"invalid topic pattern {quoted}: {problem}. {PATTERN_RULES}"


@pytest.mark.parametrize("value", [5, None, ["orders.#"], {"p": 1}])
def test_pattern_must_be_a_string(value: object) -> None:
    for check in (validate_pattern, compile_pattern):
        with pytest.raises(InvalidTopic) as info:
            check(value)
        assert str(info.value) == (
            f"invalid topic pattern {value!r}: a pattern must be a string, got "
            f"{type(value).__name__}; use e.g. 'orders.*.created' or 'orders.#'"
        )


MATCHES = [
    # literal
    ("orders.eu.created", "orders.eu.created", True),
    ("orders.eu.created", "orders.eu.created.x", False),
    ("orders.eu.created", "orders.eu", False),
    ("Orders", "orders", False),
    # '*' is exactly one segment
    ("orders.*", "orders.eu", True),
    ("orders.*", "orders", False),
    ("orders.*", "orders.eu.created", False),
    ("orders.*.created", "orders.eu.created", True),
    ("orders.*.created", "orders.created", False),
    ("orders.*.created", "orders.eu.us.created", False),
    ("*", "orders", True),
    ("*", "orders.eu", False),
    ("*.*", "a.b", True),
    # '#' is zero or more segments; 'orders.#' matches 'orders' itself (AMQP)
    ("orders.#", "orders", True),
    ("orders.#", "orders.eu", True),
    ("orders.#", "orders.eu.created", True),
    ("orders.#", "ordersx", False),
    ("orders.#", "ordersx.eu", False),
    ("orders.#", "other.orders", False),
    ("orders.eu.#", "orders.eu", True),
    ("orders.eu.#", "orders.euro", False),
    ("#", "orders", True),
    ("#", "orders.eu.created", True),
    ("#.created", "created", True),
    ("#.created", "orders.eu.created", True),
    ("#.created", "orders.created.x", False),
    ("orders.#.created", "orders.created", True),
    ("orders.#.created", "orders.eu.west.created", True),
    ("orders.#.created", "orders.eu.west.deleted", False),
    ("*.#", "orders", True),
    ("*.#", "orders.eu", True),
    ("#.*", "orders", True),
    ("*.#.*", "orders", False),
    ("*.#.*", "orders.eu", True),
    ("#.#", "a.b.c", True),
    # several '#' (the token matcher)
    ("#.b.#.c", "b.c", True),
    ("#.b.#.c", "a.b.x.y.c", True),
    ("#.b.#.c", "a.c.b", False),
    ("a.#.b.#", "a.b", True),
    ("a.#.b.#", "a.x.b.y", True),
    ("a.#.b.#", "a.x.y", False),
    ("#.a.#.a.#", "a", False),
    ("#.a.#.a.#", "a.a", True),
    ("a.#.*.#.c", "a.c", False),
    ("a.#.*.#.c", "a.b.c", True),
    # internal topics: a pattern that starts with a wildcard does not match them
    ("#", "_dlq.billing", False),
    ("*", "_x", False),
    ("*.billing", "_dlq.billing", False),
    ("#.billing", "_dlq.billing", False),
    ("#.b.#.billing", "_dlq.b.billing", False),
    ("_dlq.#", "_dlq.billing", True),
    ("_dlq.#", "_dlq", True),
    ("_dlq.*", "_dlq.billing", True),
    ("_dlq.billing", "_dlq.billing", True),
    ("orders.#", "orders._x", True),
    ("*.#.b.#", "a._x.b", True),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCHES)
def test_pattern_matching(pattern: str, topic: str, expected: bool) -> None:
    assert compile_pattern(pattern).matches(topic) is expected
    assert TopicPattern(pattern).matches(topic) is expected
    assert _reference_match(pattern, topic) is expected


def _reference_match(pattern: str, topic: str) -> bool:
    """The documented semantics, written the obvious (exponential) way."""
    if pattern.split(".")[0] in ("*", "#") and topic.startswith("_"):
        return False

    def match(tokens: list[str], segments: list[str]) -> bool:
        if not tokens:
            return not segments
        head, rest = tokens[0], tokens[1:]
        if head == "#":
            return any(match(rest, segments[i:]) for i in range(len(segments) + 1))
        if not segments:
            return False
        return (head == "*" or head == segments[0]) and match(rest, segments[1:])

    return match(pattern.split("."), topic.split("."))


def test_every_matcher_strategy_agrees_with_the_reference() -> None:
    rng = random.Random(20240601)
    words = ["a", "b", "_c"]
    for _ in range(4000):
        tokens = [rng.choice([*words[:2], "*", "#"]) for _ in range(rng.randint(1, 5))]
        segments = [rng.choice(words) for _ in range(rng.randint(1, 6))]
        pattern, topic = ".".join(tokens), ".".join(segments)
        assert compile_pattern(pattern).matches(topic) is _reference_match(pattern, topic), (
            pattern,
            topic,
        )


def test_many_hashes_do_not_backtrack_exponentially() -> None:
    # A backtracking regex needs ~n**4 steps here; the token matcher is O(n*m).
    pattern = "#.a.#.a.#.a.#.b"
    topic = ".".join(["a"] * 120)
    assert not compile_pattern(pattern).matches(topic)
    assert compile_pattern(pattern).matches(topic + ".b")


def test_compiled_patterns_are_cached_frozen_and_compare_by_pattern() -> None:
    first = compile_pattern("orders.*")
    assert compile_pattern("orders.*") is first
    assert first == TopicPattern("orders.*")
    assert hash(first) == hash(TopicPattern("orders.*"))
    assert first != TopicPattern("orders.#")
    assert repr(first) == "TopicPattern(pattern='orders.*')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.pattern = "#"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [("orders.eu", True), ("_dlq.billing", True), ("orders.*", False), ("#", False)],
)
def test_is_literal(pattern: str, literal: bool) -> None:
    assert compile_pattern(pattern).is_literal is literal


# --------------------------------------------------------------------------------------------
# Groups and dead-letter topics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "group", ["billing", "EventMeshTest-consumerGroup", "team.billing_v2", "g" * 200, "0"]
)
def test_dlq_topic_is_a_valid_internal_topic(group: str) -> None:
    assert validate_group(group) == group
    topic = dlq_topic(group)
    assert topic == f"_dlq.{group}"
    assert validate_topic(topic) == topic
    assert is_internal(topic)
    assert compile_pattern("_dlq.#").matches(topic)
    assert not compile_pattern("#").matches(topic)


DOTS = (
    "a '.' leads, trails or is doubled (the group name becomes segments of its dead-letter "
    "topic _dlq.{group})"
)


@pytest.mark.parametrize(
    ("group", "problem"),
    [
        ("", "it is empty"),
        ("billing/eu", "it contains '/'"),
        ("billing eu", "it contains ' '"),
        ("billing:eu", "it contains ':'"),
        ("orders.*", "it contains '*'"),
        ("billing..eu", DOTS),
        (".billing", DOTS),
        ("billing.", DOTS),
    ],
)
def test_invalid_groups_say_which_rule_broke(group: str, problem: str) -> None:
    for check in (validate_group, dlq_topic):
        with pytest.raises(InvalidSubscription) as info:
            check(group)
        assert str(info.value) == f"invalid consumer group {group!r}: {problem}. {GROUP_RULES}"


def test_group_too_long() -> None:
    with pytest.raises(InvalidSubscription) as info:
        dlq_topic("g" * 201)
    assert str(info.value) == (
        f"invalid consumer group {'g' * 60!r}... (201 characters): it is longer than 200 "
        f"characters. {GROUP_RULES}"
    )


def test_group_must_be_a_string() -> None:
    with pytest.raises(InvalidSubscription) as info:
        dlq_topic(7)  # type: ignore[arg-type]
    assert str(info.value) == (
        "invalid consumer group 7: a group name must be a string, got int; "
        "use e.g. 'billing-service'"
    )
