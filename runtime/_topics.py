"""Topic names, subscription patterns and dead-letter topic names.

Every publish names a topic and every subscription names a pattern, so these rules decide what
can be routed at all. They are chosen so that one name works unchanged everywhere Meshtap puts it:
in URL paths (``/eventmesh/publish/{topic}``), in Redis keys, as NATS subject tokens and as Kafka
topic names (a bridge may forward to Kafka, hence Kafka's 249-character limit).

Topic names
    * 1 to 249 characters, made of segments separated by ``.``: ``orders.eu.created``.
    * Every segment is non-empty (no leading, trailing or doubled dot) and uses only ASCII letters,
      digits, ``_`` and ``-``. EventMesh-style names such as ``TEST-TOPIC-HTTP-ASYNC`` are valid.
    * Names are case-sensitive: ``Orders`` and ``orders`` are different topics.
    * ``/`` and ``:`` are not allowed: ``/`` would split the topic across URL path segments, ``:``
      is the separator inside the stores' Redis keys, and neither is legal in a Kafka topic.
      Use ``.`` to build hierarchies.
    * ``*`` and ``#`` are wildcards and only appear in patterns, never in topic names.
    * A topic whose first character is ``_`` is *internal*: the mesh itself publishes there (the
      dead-letter topics ``_dlq.{group}``). Internal names are valid topics - they can be
      subscribed to and replayed - and `is_internal` lets the API layer decide who may publish.

Patterns
    * The same rules as topic names, except that a segment may be exactly ``*`` (matches exactly
      one segment) or exactly ``#`` (matches zero or more segments), as in AMQP topic exchanges.
      Wildcards are whole segments: ``orders.*.created``, ``orders.#`` and ``#`` are patterns,
      ``orders*`` is not.
    * ``#`` matches zero segments, so ``orders.#`` matches ``orders`` itself as well as
      ``orders.eu`` and ``orders.eu.created`` (AMQP semantics). ``orders.*`` does not match
      ``orders``.
    * A pattern whose *first* segment is a wildcard does not match internal topics, just as MQTT
      wildcards do not match ``$SYS`` topics. Otherwise a catch-all ``#`` subscriber would receive
      the dead letters of its own failed deliveries, and a failing ``#`` consumer group would feed
      its own dead-letter topic forever. Name the prefix to see them: ``_dlq.#``, ``_dlq.billing``.

Consumer group names
    * 1 to 200 characters of ASCII letters, digits, ``_``, ``-`` and ``.``; dots may not lead,
      trail or double, because the group becomes the tail of its dead-letter topic ``_dlq.{group}``
      and must form valid segments there.

Everything here is pure and allocation-light: `TopicPattern.matches` runs once per event per
subscription, so patterns are compiled once (and cached by pattern string) into the cheapest
matcher that is correct for them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from runtime._errors import InvalidSubscription, InvalidTopic

MAX_TOPIC_LENGTH: Final = 249
MAX_GROUP_LENGTH: Final = 200
INTERNAL_PREFIX: Final = "_"
DLQ_PREFIX: Final = "_dlq."
ONE_SEGMENT: Final = "*"
ANY_SEGMENTS: Final = "#"

_TOPIC_RE: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_PATTERN_RE: Final = re.compile(r"(?:[A-Za-z0-9_-]+|[*#])(?:\.(?:[A-Za-z0-9_-]+|[*#]))*")
_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_GROUP_RE: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_GROUP_CHARS_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_TOPIC_EXAMPLE: Final = "'orders.eu.created'"
_PATTERN_EXAMPLE: Final = "'orders.*.created' or 'orders.#'"
_GROUP_EXAMPLE: Final = "'billing-service'"
_QUOTE_LIMIT: Final = 60

# Hints for characters people bring from other brokers' naming schemes.
_CHAR_HINTS: Final = {
    "/": "use '.' to separate segments ('/' would split the topic in URL paths)",
    ":": "use '.' to separate segments (':' separates the parts of store keys)",
    " ": "topic names contain no whitespace",
    ">": "use '#' for any number of trailing segments (NATS '>' is not supported)",
    "+": "use '*' for exactly one segment (MQTT '+' is not supported)",
}


def _quote(value: object) -> str:
    """repr() of a user value, shortened so a huge input cannot flood logs or responses."""
    if isinstance(value, str) and len(value) > _QUOTE_LIMIT:
        return repr(value[:_QUOTE_LIMIT]) + f"... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _describe_problem(name: str, *, pattern: bool) -> str:
    """Say which naming rule `name` breaks; only called once the fast regex check has failed."""
    if name == "":
        return "it is empty"
    if len(name) > MAX_TOPIC_LENGTH:
        return f"it is longer than {MAX_TOPIC_LENGTH} characters"
    segments = name.split(".")
    for index, segment in enumerate(segments, start=1):
        if segment == "":
            if index == 1:
                return "it starts with '.'"
            if index == len(segments):
                return "it ends with '.'"
            return f"segment {index} is empty (two dots in a row)"
        if segment in (ONE_SEGMENT, ANY_SEGMENTS):
            if not pattern:
                return (
                    f"segment {index} is the wildcard {segment!r}; wildcards belong in "
                    "subscription patterns, a topic name must be concrete"
                )
            continue
        if _SEGMENT_RE.fullmatch(segment):
            continue
        if pattern and ("*" in segment or "#" in segment):
            return (
                f"segment {index} ({segment!r}) mixes a wildcard with other characters; "
                "'*' and '#' must be whole segments"
            )
        if not pattern and ("*" in segment or "#" in segment):
            return (
                f"segment {index} ({segment!r}) contains a wildcard; wildcards belong in "
                "subscription patterns, a topic name must be concrete"
            )
        bad = next(ch for ch in segment if not _SEGMENT_RE.fullmatch(ch))
        hint = _CHAR_HINTS.get(bad, "segments use only ASCII letters, digits, '_' and '-'")
        return f"segment {index} ({segment!r}) contains {bad!r}: {hint}"
    raise AssertionError(f"{name!r} breaks no rule")  # pragma: no cover


def validate_topic(name: object) -> str:
    """Return `name` if it is a valid topic name, else raise InvalidTopic saying why.

    Accepts any object so that API handlers can pass JSON values straight in.
    """
    if not isinstance(name, str):
        raise InvalidTopic(
            f"invalid topic {_quote(name)}: a topic name must be a string, got "
            f"{type(name).__name__}; use e.g. {_TOPIC_EXAMPLE}"
        )
    if len(name) <= MAX_TOPIC_LENGTH and _TOPIC_RE.fullmatch(name):
        return name
    problem = _describe_problem(name, pattern=False)
    raise InvalidTopic(
        f"invalid topic {_quote(name)}: {problem}. Topic names are 1-{MAX_TOPIC_LENGTH} "
        "characters of dot-separated segments of letters, digits, '_' and '-', "
        f"e.g. {_TOPIC_EXAMPLE}"
    )


def validate_pattern(pattern: object) -> str:
    """Return `pattern` if it is a valid subscription pattern, else raise InvalidTopic."""
    if not isinstance(pattern, str):
        raise InvalidTopic(
            f"invalid topic pattern {_quote(pattern)}: a pattern must be a string, got "
            f"{type(pattern).__name__}; use e.g. {_PATTERN_EXAMPLE}"
        )
    if len(pattern) <= MAX_TOPIC_LENGTH and _PATTERN_RE.fullmatch(pattern):
        return pattern
    problem = _describe_problem(pattern, pattern=True)
    raise InvalidTopic(
        f"invalid topic pattern {_quote(pattern)}: {problem}. Patterns are topic names whose "
        "segments may also be '*' (exactly one segment) or '#' (zero or more segments), "
        f"e.g. {_PATTERN_EXAMPLE}"
    )


def is_internal(topic: str) -> bool:
    """True for topics the mesh reserves for itself (``_dlq.billing``), which start with ``_``."""
    return topic.startswith(INTERNAL_PREFIX)


def validate_group(group: object) -> str:
    """Return `group` if it is a valid consumer group name, else raise InvalidSubscription.

    A group name is part of a subscription, so a bad one is a bad subscription (HTTP 400).
    """
    if not isinstance(group, str):
        raise InvalidSubscription(
            f"invalid consumer group {_quote(group)}: a group name must be a string, got "
            f"{type(group).__name__}; use e.g. {_GROUP_EXAMPLE}"
        )
    if len(group) <= MAX_GROUP_LENGTH and _GROUP_RE.fullmatch(group):
        return group
    if group == "":
        problem = "it is empty"
    elif len(group) > MAX_GROUP_LENGTH:
        problem = f"it is longer than {MAX_GROUP_LENGTH} characters"
    elif not _GROUP_CHARS_RE.fullmatch(group):
        bad = next(ch for ch in group if not _GROUP_CHARS_RE.fullmatch(ch))
        problem = f"it contains {bad!r}"
    else:
        problem = (
            "a '.' leads, trails or is doubled (the group name becomes segments of its "
            f"dead-letter topic {DLQ_PREFIX}{{group}})"
        )
    raise InvalidSubscription(
        f"invalid consumer group {_quote(group)}: {problem}. Group names are "
        f"1-{MAX_GROUP_LENGTH} characters of letters, digits, '_', '-' and '.', "
        f"e.g. {_GROUP_EXAMPLE}"
    )


def dlq_topic(group: str) -> str:
    """The dead-letter topic of a consumer group: ``_dlq.{group}``.

    Raises InvalidSubscription if `group` is not a valid group name, so a bad group can never
    produce a topic that the stores would refuse at the worst moment (while dead-lettering).
    """
    return DLQ_PREFIX + validate_group(group)


# --------------------------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------------------------


def _segments_match(tokens: Sequence[str], segments: Sequence[str]) -> bool:
    """Match topic segments against pattern tokens where ``#`` can occur several times.

    Greedy with backtracking to the most recent ``#`` only (the classic wildcard algorithm):
    O(len(tokens) * len(segments)) in the worst case, unlike a backtracking regex, whose cost
    grows with the power of the number of ``#`` - a pattern is user input, so that matters.
    """
    t = s = 0
    star_t = -1
    star_s = 0
    n_tokens = len(tokens)
    n_segments = len(segments)
    while s < n_segments:
        if t < n_tokens and tokens[t] == ANY_SEGMENTS:
            star_t, star_s = t, s
            t += 1
        elif t < n_tokens and (tokens[t] == ONE_SEGMENT or tokens[t] == segments[s]):
            t += 1
            s += 1
        elif star_t >= 0:
            star_s += 1
            t, s = star_t + 1, star_s
        else:
            return False
    while t < n_tokens and tokens[t] == ANY_SEGMENTS:
        t += 1
    return t == n_tokens


def _build_matcher(pattern: str) -> Callable[[str], bool]:
    """Pick the cheapest correct matcher for a validated pattern.

    Topics passed to the matcher are assumed valid (the publish path validated them), so no
    check is repeated per event.
    """
    tokens: list[str] = []
    for token in pattern.split("."):
        if not (token == ANY_SEGMENTS and tokens and tokens[-1] == ANY_SEGMENTS):
            tokens.append(token)  # '#.#' means the same as '#'
    wildcards = {ONE_SEGMENT, ANY_SEGMENTS}
    guard_internal = tokens[0] in wildcards

    if not wildcards.intersection(tokens):
        return pattern.__eq__
    if tokens == [ANY_SEGMENTS]:
        return _not_internal
    if tokens[-1] == ANY_SEGMENTS and not wildcards.intersection(tokens[:-1]):
        prefix = ".".join(tokens[:-1])
        dotted = prefix + "."
        return lambda topic: topic == prefix or topic.startswith(dotted)

    if tokens.count(ANY_SEGMENTS) <= 1:
        # One '#' at most: the regex cannot backtrack badly ('[^.]+' never crosses a dot, so
        # only the length of the '#' run is ever tried again), and it runs in C.
        pieces = ["(?!\\._)" if guard_internal else ""]
        for token in tokens:
            if token == ONE_SEGMENT:
                pieces.append(r"\.[^.]+")
            elif token == ANY_SEGMENTS:
                pieces.append(r"(?:\.[^.]+)*")
            else:
                pieces.append(r"\." + re.escape(token))
        fullmatch = re.compile("".join(pieces)).fullmatch
        return lambda topic: fullmatch("." + topic) is not None

    frozen = tuple(tokens)
    if guard_internal:
        return lambda topic: (
            not topic.startswith(INTERNAL_PREFIX) and _segments_match(frozen, topic.split("."))
        )
    return lambda topic: _segments_match(frozen, topic.split("."))


def _not_internal(topic: str) -> bool:
    return not topic.startswith(INTERNAL_PREFIX)


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """A validated, compiled subscription pattern; equal and hashable by its pattern string.

    Build it with `compile_pattern` to share compiled matchers between subscriptions;
    constructing it directly validates and compiles too.
    """

    pattern: str
    _match: Callable[[str], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_pattern(self.pattern)
        object.__setattr__(self, "_match", _build_matcher(self.pattern))

    @property
    def is_literal(self) -> bool:
        """True when the pattern has no wildcard, so stores can index it by exact topic."""
        return "*" not in self.pattern and "#" not in self.pattern

    def matches(self, topic: str) -> bool:
        """Whether the (already validated) topic name `topic` falls under this pattern."""
        return self._match(topic)


@functools.lru_cache(maxsize=4096)
def _compile_cached(pattern: str) -> TopicPattern:
    return TopicPattern(pattern)


def compile_pattern(pattern: object) -> TopicPattern:
    """The compiled `TopicPattern` for `pattern`, cached by pattern string.

    Raises InvalidTopic for an invalid pattern (invalid patterns are not cached).
    """
    # validate_pattern() raises for every non-string; strings are validated on a cache miss only.
    return _compile_cached(pattern if isinstance(pattern, str) else validate_pattern(pattern))
