"""Model-name patterns: exact, glob or regex, all bounded.

Regexes are checked when saved (length, compiles, no nested or alternated unbounded
repeats, no backreferences: the shapes that backtrack catastrophically) and matched with
the `regex` package's timeout as a second guard. Globs become linear-time regexes
(`fnmatch.translate`). Every match is a full match and case-sensitive.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable
from typing import Any

import regex

from mlxmanager.errors import DomainError

log = logging.getLogger(__name__)

MAX_PATTERN = 200
MATCH_TIMEOUT_S = 0.01

try:  # the stdlib parser, to inspect a pattern's structure
    from re import _constants as _sre_constants  # type: ignore[attr-defined]
    from re import _parser as _sre_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older layouts
    import sre_constants as _sre_constants  # type: ignore[no-redef]
    import sre_parse as _sre_parser  # type: ignore[no-redef]

_REPEATS = {_sre_constants.MAX_REPEAT, _sre_constants.MIN_REPEAT}
if hasattr(_sre_constants, "POSSESSIVE_REPEAT"):
    _REPEATS.add(_sre_constants.POSSESSIVE_REPEAT)
_MAXREPEAT = _sre_constants.MAXREPEAT


def _walk(items: Any, multi: bool, unbounded: bool) -> None:
    """`multi`/`unbounded`: whether an enclosing repeat may run more than once / without limit."""
    for op, av in items:
        if op in _REPEATS:
            _lo, hi, sub = av
            inner_unbounded = hi == _MAXREPEAT or hi > 50
            if (multi and inner_unbounded) or (unbounded and hi > 1):
                raise DomainError("nested repetition like (a+)+ can take exponential time", param="pattern")
            _walk(sub, multi or hi > 1, unbounded or inner_unbounded)
        elif op == _sre_constants.BRANCH:
            if unbounded:
                raise DomainError(
                    "alternation inside a repetition like (a|b)* is not allowed", param="pattern"
                )
            for branch in av[1]:
                _walk(branch, multi, unbounded)
        elif op == _sre_constants.SUBPATTERN:
            _walk(av[-1], multi, unbounded)
        elif op in (_sre_constants.ASSERT, _sre_constants.ASSERT_NOT):
            _walk(av[1], multi, unbounded)
        elif op in (_sre_constants.GROUPREF, _sre_constants.GROUPREF_EXISTS):
            raise DomainError("backreferences are not allowed", param="pattern")
        elif hasattr(_sre_constants, "ATOMIC_GROUP") and op == _sre_constants.ATOMIC_GROUP:
            _walk(av, multi, unbounded)


def validate(match_type: str, pattern: str) -> str:
    """The cleaned pattern, or DomainError(param="pattern") saying what is wrong."""
    if match_type not in ("exact", "glob", "regex"):
        raise DomainError("match type must be exact, glob or regex", param="match_type")
    pattern = (pattern or "").strip()
    if not pattern:
        raise DomainError("the pattern is empty", param="pattern")
    if len(pattern) > MAX_PATTERN:
        raise DomainError(f"the pattern is longer than {MAX_PATTERN} characters", param="pattern")
    if match_type == "regex":
        try:
            parsed = _sre_parser.parse(pattern)
            regex.compile(pattern)
        except (re.error, regex.error, RecursionError, OverflowError) as exc:
            raise DomainError(f"not a valid regular expression: {exc}", param="pattern") from exc
        _walk(parsed, False, False)
    return pattern


def compile_matcher(match_type: str, pattern: str) -> Callable[[str], bool]:
    if match_type == "exact":
        return pattern.__eq__
    if match_type == "glob":
        compiled = re.compile(fnmatch.translate(pattern))
        return lambda name: compiled.match(name) is not None
    rx = regex.compile(pattern)

    def match(name: str) -> bool:
        try:
            return rx.fullmatch(name, timeout=MATCH_TIMEOUT_S) is not None
        except TimeoutError:
            log.warning("routing regex %r timed out; treated as no match", pattern)
            return False

    return match
