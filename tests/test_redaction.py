"""Redaction masks configured fields and extensions with a keyed hash, and nothing else."""

from __future__ import annotations

import json

import pytest

from runtime import CloudEvent
from tracing._redaction import TOKEN_PREFIX, RedactionConfigError, Redactor


def make(data: object, content_type: str | None = "application/json", **extra: str) -> CloudEvent:
    attributes: dict[str, str | int | bool] = {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
        **extra,
    }
    if content_type:
        attributes["datacontenttype"] = content_type
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return CloudEvent(attributes, raw)


REDACTOR = Redactor.build(
    ("card.number", "items.*.iban", "customer.phones.0", "secret"), ("authorization",), "k3y"
)


def test_fields_and_extensions_are_replaced_by_a_keyed_hash() -> None:
    event = make(
        {
            "card": {"number": "4111111111111111", "brand": "visa"},
            "items": [{"iban": "DE89", "qty": 1}, {"iban": "FR76", "qty": 2}],
            "customer": {"phones": ["+4930123", "+4940456"]},
            "secret": {"nested": True},
        },
        authorization="Bearer abc",
        tenant="acme",
    )
    redacted = REDACTOR.redact(event)
    data = json.loads(redacted.data or b"")
    assert data["card"]["number"].startswith(TOKEN_PREFIX)
    assert data["card"]["brand"] == "visa"
    assert [i["iban"][: len(TOKEN_PREFIX)] for i in data["items"]] == [TOKEN_PREFIX] * 2
    assert [i["qty"] for i in data["items"]] == [1, 2]
    assert data["customer"]["phones"][0].startswith(TOKEN_PREFIX)
    assert data["customer"]["phones"][1] == "+4940456"
    assert data["secret"].startswith(TOKEN_PREFIX)
    assert str(redacted.attributes["authorization"]).startswith(TOKEN_PREFIX)
    assert redacted.attributes["tenant"] == "acme"
    for secret in (b"4111111111111111", b"DE89", b"+4930123", b"Bearer"):
        assert secret not in (redacted.data or b"") + json.dumps(dict(redacted.attributes)).encode()


def test_equal_values_get_equal_tokens_and_keys_matter() -> None:
    one = REDACTOR.redact(make({"card": {"number": "42"}}))
    two = REDACTOR.redact(make({"card": {"number": "42"}}))
    other = REDACTOR.redact(make({"card": {"number": "43"}}))
    assert one.data == two.data
    assert one.data != other.data
    other_key = Redactor.build(("card.number",), (), "another key")
    assert other_key.redact(make({"card": {"number": "42"}})).data != one.data


def test_untouched_events_are_returned_as_they_are() -> None:
    event = make({"unrelated": 1})
    assert REDACTOR.redact(event) is event
    binary = make(b"\x00\xff", content_type="application/octet-stream", authorization="x")
    redacted = REDACTOR.redact(binary)
    assert redacted.data == b"\x00\xff"  # not JSON: no path applies
    assert str(redacted.attributes["authorization"]).startswith(TOKEN_PREFIX)
    assert Redactor.build((), (), "").redact(event) is event


def test_invalid_json_with_json_content_type_is_left_alone() -> None:
    event = make(b"{not json", authorization="y")
    assert REDACTOR.redact(event).data == b"{not json"


def test_a_key_is_required_when_anything_is_redacted() -> None:
    with pytest.raises(RedactionConfigError, match="--redaction-key"):
        Redactor.build(("card.number",), (), "")


@pytest.mark.parametrize("path", ["", "card..number", ".card", "card."])
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(RedactionConfigError, match="malformed"):
        Redactor.build((path,), (), "k")
