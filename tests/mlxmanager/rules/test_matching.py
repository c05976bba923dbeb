from __future__ import annotations

import time

import pytest

from mlxmanager.errors import DomainError
from mlxmanager.rules.matching import compile_matcher, validate


def test_exact_glob_regex() -> None:
    assert compile_matcher("exact", "gpt-4o")("gpt-4o") and not compile_matcher("exact", "gpt-4o")(
        "gpt-4o-mini"
    )
    glob = compile_matcher("glob", "claude-*-[0-9]")
    assert glob("claude-sonnet-4") and not glob("claude-sonnet") and not glob("xclaude-a-1")
    rx = compile_matcher("regex", r"llama-3\.\d+(-\w+)?")
    assert rx("llama-3.1-instruct") and rx("llama-3.2") and not rx("llama-3.2-")


@pytest.mark.parametrize(
    "pattern",
    [r"(a+)+$", r"(a*)*b", r"(a|aa)+", r"(\w+\s?)*$", r"(.*a){20}", r"(a)\1", "x" * 201, r"(unclosed"],
)
def test_catastrophic_or_invalid_regexes_are_refused(pattern: str) -> None:
    with pytest.raises(DomainError) as err:
        validate("regex", pattern)
    assert err.value.param == "pattern"


def test_accepted_regexes_stay_fast_on_hostile_names() -> None:
    for pattern in (r"[a-z]+-\d+", r"gpt-4(o|-turbo)?(-mini)?", r"(?:claude|anthropic)/.+"):
        match = compile_matcher("regex", validate("regex", pattern))
        start = time.perf_counter()
        match("a" * 250 + "!")
        assert time.perf_counter() - start < 0.05


def test_globs_are_linear() -> None:
    match = compile_matcher("glob", "*a*a*a*a*a*a*a*b")
    start = time.perf_counter()
    assert not match("a" * 256)
    assert time.perf_counter() - start < 0.05


def test_other_validation() -> None:
    with pytest.raises(DomainError):
        validate("fuzzy", "x")
    with pytest.raises(DomainError):
        validate("exact", "  ")
    assert validate("glob", " gpt-* ") == "gpt-*"
