"""Property-based tests (hypothesis) of the parsers that take user input: CloudEvents in every
HTTP content mode, topic names and patterns (and the ACL rights built on them), subscription
filters and the replay spec. Each either accepts or raises its package's own error with a
message; nothing else escapes, and what is accepted round-trips."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime._auth import pattern_allows
from runtime._errors import InvalidRequest, MeshtapError
from runtime._events import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    CloudEvent,
    from_http,
    to_binary_http,
    to_json_object,
)
from runtime._filters import compile_filters
from runtime._topics import compile_pattern, validate_pattern, validate_topic

QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
segment = st.text(alphabet="abcxyz09-_", min_size=1, max_size=4).filter(
    lambda s: not s.startswith("_")
)
topics = st.lists(segment, min_size=1, max_size=5).map(".".join)
pattern_tokens = st.one_of(segment, st.just("*"), st.just("#"))
patterns = st.lists(pattern_tokens, min_size=1, max_size=5).map(".".join)
ext_names = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True).filter(
    lambda n: n not in {"id", "source", "type", "specversion", "data", "data_base64", "time"}
)
printable = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=30
)


# -- CloudEvents ---------------------------------------------------------------------------


@st.composite
def cloudevents(draw: st.DrawFn) -> CloudEvent:
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(printable),
        "source": "/" + draw(printable),
        "type": draw(printable),
        "time": draw(st.sampled_from(["2026-11-26T10:00:00Z", "2026-11-26T10:00:00.123456Z"])),
    }
    for name in draw(st.lists(ext_names, max_size=3, unique=True)):
        attributes[name] = draw(printable)
    data = draw(st.none() | st.binary(max_size=64))
    if data is not None:
        attributes["datacontenttype"] = "application/octet-stream"
    return CloudEvent(attributes, data)


@QUICK
@given(cloudevents())
def test_binary_mode_round_trips(event: CloudEvent) -> None:
    headers, body = to_binary_http(event)
    (parsed,) = from_http(headers, body)
    assert dict(parsed.attributes) == dict(event.attributes)
    assert (parsed.data or b"") == (event.data or b"")


@QUICK
@given(st.lists(cloudevents(), min_size=1, max_size=4))
def test_structured_and_batch_modes_round_trip(events: list[CloudEvent]) -> None:
    (one,) = from_http(
        {"content-type": STRUCTURED_CONTENT_TYPE}, json.dumps(to_json_object(events[0])).encode()
    )
    assert one.id == events[0].id
    assert (one.data or b"") == (events[0].data or b"")
    batch = from_http(
        {"content-type": BATCH_CONTENT_TYPE},
        json.dumps([to_json_object(e) for e in events]).encode(),
    )
    assert [e.id for e in batch] == [e.id for e in events]


content_types = st.sampled_from(
    [
        STRUCTURED_CONTENT_TYPE,
        BATCH_CONTENT_TYPE,
        "application/json",
        "text/plain",
        "application/cloudevents+json; charset=utf-8",
        "",
        "garbage/\x7f",
    ]
)


@QUICK
@given(
    content_types,
    st.dictionaries(
        st.sampled_from(
            [
                "ce-id",
                "ce-source",
                "ce-type",
                "ce-specversion",
                "ce-time",
                "ce-traceparent",
                "ce-partitionkey",
                "ce-x",
            ]
        ),
        st.text(max_size=40),
        max_size=6,
    ),
    st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())),
)
def test_any_http_request_parses_or_is_refused_with_a_reason(
    content_type: str, ce_headers: dict[str, str], body: bytes
) -> None:
    headers = {"content-type": content_type, **ce_headers} if content_type else dict(ce_headers)
    try:
        events = from_http(headers, body)
    except InvalidRequest as e:
        events, refusal = [], str(e)
    else:
        refusal = "accepted"
    assert refusal  # a refusal carries a message, never an empty one
    for event in events:
        assert event.id
        assert event.attributes["specversion"]


# -- topics, patterns and rights -----------------------------------------------------------


def reference_match(pattern: str, topic: str) -> bool:
    """A deliberately naive (exponential) matcher to check the optimised one against."""

    def match(tokens: list[str], segments: list[str]) -> bool:
        if not tokens:
            return not segments
        head, rest = tokens[0], tokens[1:]
        if head == "#":
            return any(match(rest, segments[i:]) for i in range(len(segments) + 1))
        return bool(segments) and head in ("*", segments[0]) and match(rest, segments[1:])

    return match(pattern.split("."), topic.split("."))


@QUICK
@given(patterns, topics)
def test_pattern_matching_agrees_with_a_reference(pattern: str, topic: str) -> None:
    validate_topic(topic)
    compiled = compile_pattern(pattern)
    assert compiled.matches(topic) == reference_match(pattern, topic), (pattern, topic)


@QUICK
@given(patterns, patterns, topics)
def test_a_right_never_covers_a_topic_outside_it(grant: str, wanted: str, topic: str) -> None:
    if pattern_allows(grant, wanted) and compile_pattern(wanted).matches(topic):
        assert compile_pattern(grant).matches(topic), (grant, wanted, topic)


@QUICK
@given(patterns)
def test_every_pattern_covers_itself(pattern: str) -> None:
    assert pattern_allows(pattern, pattern)


@QUICK
@given(st.text(max_size=40) | json_values)
def test_any_topic_or_pattern_is_valid_or_refused_with_a_reason(value: Any) -> None:
    for check in (validate_topic, validate_pattern):
        refusal = "accepted"
        try:
            check(value)
        except InvalidRequest as e:
            refusal = str(e)
        assert refusal


# -- filters ---------------------------------------------------------------------------------

filter_docs = st.recursive(
    st.dictionaries(
        st.sampled_from(["exact", "prefix", "suffix"]),
        st.dictionaries(st.sampled_from(["type", "source", "subject", "x", "Bad!"]), json_values),
        min_size=1,
        max_size=1,
    ),
    lambda inner: st.dictionaries(
        st.sampled_from(["all", "any", "not", "bogus"]),
        st.lists(inner, max_size=3) | inner,
        min_size=1,
        max_size=2,
    ),
    max_leaves=8,
)


@QUICK
@given(st.lists(filter_docs, max_size=3) | json_values, cloudevents())
def test_filters_compile_or_are_refused_and_compiled_ones_round_trip(
    raw: Any, event: CloudEvent
) -> None:
    try:
        compiled = compile_filters(raw)
    except MeshtapError as e:
        refusal = str(e)
        assert refusal
        return
    assert compile_filters(compiled.to_json()) == compiled
    assert compiled.matches(event) in (True, False)


# -- the replay spec ---------------------------------------------------------------------------

spec_docs = st.fixed_dictionaries(
    {},
    optional={
        "topics": st.lists(patterns, max_size=3) | json_values,
        "since": st.sampled_from(["2026-11-26T10:00:00+00:00", "yesterday", "2026-11-26"])
        | json_values,
        "until": st.sampled_from(["2026-11-26T11:00:00+00:00", "2026-11-26T09:00:00+00:00"]),
        "speed": st.sampled_from(["max", "1", "10", "fast", ""]) | json_values,
        "sample_percent": st.integers(-5, 150) | json_values,
        "limit": st.integers(-2, 10) | st.none(),
        "filters": st.lists(st.text(max_size=20), max_size=3),
        "to_prefix": st.sampled_from(["replay.", "", "prod."]),
        "max_events": st.integers(-1, 10**6) | json_values,
        "bogus": json_values,
    },
)


@QUICK
@given(spec_docs)
def test_any_replay_spec_document_is_a_spec_or_refused_with_a_reason(doc: dict[str, Any]) -> None:
    from replay import InvalidSpec, ReplaySpec

    try:
        spec = ReplaySpec.from_json(doc)
    except InvalidSpec as e:
        refusal = str(e)
        assert refusal
        return
    assert ReplaySpec.from_json(spec.to_json()) == spec
