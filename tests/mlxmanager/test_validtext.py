"""mlxmanager.validtext: finding lone surrogates in parsed JSON, and the error pydantic keeps."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from mlxmanager.validtext import ValidUnicode, find_invalid_unicode, first_surrogate, scrub


def test_first_surrogate() -> None:
    assert first_surrogate("plain") is None
    assert first_surrogate("é 😀 \U0010ffff") is None  # valid non-ASCII, astral included
    assert first_surrogate("ab\ud800") == 2
    assert first_surrogate("\udfff") == 0
    assert json.loads(r'"\ud83d\ude00"') == "😀"  # an escaped *pair* is one valid code point


def test_find_reports_the_first_bad_string_in_document_order() -> None:
    data = json.loads(r'{"a": "ok", "b": [1, {"c": "x\udc00"}], "d": "\ud800"}')
    loc, detail = find_invalid_unicode(data)  # type: ignore[misc]
    assert loc == ("b", 1, "c")
    assert "U+DC00" in detail and "character 1" in detail
    assert find_invalid_unicode({"a": ["ok", {"b": None, "c": 1.5}]}) is None
    assert find_invalid_unicode("\ud800") == ((), find_invalid_unicode("\ud800")[1])  # type: ignore[index]


def test_a_bad_key_is_reported_at_its_object() -> None:
    loc, detail = find_invalid_unicode({"a": {"\ud800": 1}})  # type: ignore[misc]
    assert loc == ("a",) and "key" in detail
    assert "\ud800" not in detail  # never echoes the text it refuses


def test_deep_nesting_needs_no_recursion() -> None:
    data: object = "\ud800"
    for _ in range(50_000):
        data = [data]
    loc, _ = find_invalid_unicode(data)  # type: ignore[misc]
    assert len(loc) == 50_000


def test_scrub() -> None:
    assert scrub("a\ud800b") == "a\ufffdb"
    assert scrub("é") == "é"


class Inner(BaseModel):
    text: str


class Body(ValidUnicode):
    items: list[Inner]


def test_the_mixin_keeps_the_location_for_the_api_error() -> None:
    with pytest.raises(ValidationError) as info:
        Body.model_validate({"items": [{"text": "ok"}, {"text": "\ud800"}]})
    (err,) = info.value.errors()
    assert err["loc"] == ("items", 1, "text") and err["type"] == "invalid_unicode"
    assert err["msg"].startswith("invalid Unicode: a lone surrogate (U+D800)")
    assert Body.model_validate({"items": [{"text": "😀"}]}).items[0].text == "😀"
