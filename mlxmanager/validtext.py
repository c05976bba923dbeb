"""Refuse text that is not valid Unicode: a lone surrogate (U+D800–U+DFFF).

JSON lets a client write `"\\ud800"`, and Python's JSON parser turns it (or the invalid UTF-8
bytes ED A0 80) into a `str` holding a lone surrogate. Such a string cannot be encoded as
UTF-8: the worker's msgpack encoder, the database and the JSON error bodies would all fail on
it later, as a 500. Request bodies are checked here, as they are validated, and refused with
a 400 that names the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

_SURROGATE = re.compile("[\ud800-\udfff]")

Loc = tuple[str | int, ...]


def first_surrogate(text: str) -> int | None:
    """Where the first lone surrogate of `text` sits, or None (valid Unicode)."""
    if text.isascii():  # the common case, in C, without the regex
        return None
    found = _SURROGATE.search(text)
    return found.start() if found else None


def scrub(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD: storable, for what is only recorded."""
    return text if first_surrogate(text) is None else _SURROGATE.sub("\ufffd", text)


def _describe(text: str, at: int) -> str:
    return f"a lone surrogate (U+{ord(text[at]):04X}) at character {at}; send valid UTF-8 text"


def find_invalid_unicode(data: Any) -> tuple[Loc, str] | None:
    """The location and a description of the first string in `data` (parsed JSON: values and
    object keys, in document order) that holds a lone surrogate; None if there is none.
    A bad key is reported at its object's location (the key itself cannot be shown)."""
    if isinstance(data, str):
        at = first_surrogate(data)
        return None if at is None else ((), _describe(data, at))
    if not isinstance(data, dict | list | tuple):
        return None
    # Depth-first with a stack of (key in the parent, the container's items): no recursion, and
    # a location is only built for the string that is reported.
    stack: list[tuple[str | int, Iterator[tuple[Any, Any]]]] = [("", _items(data))]
    while stack:
        for key, value in stack[-1][1]:
            if isinstance(key, str) and (at := first_surrogate(key)) is not None:
                return _loc(stack), "an object key holds " + _describe(key, at)
            if isinstance(value, str):
                if (at := first_surrogate(value)) is not None:
                    return (*_loc(stack), key), _describe(value, at)
            elif isinstance(value, dict | list | tuple):
                stack.append((key, _items(value)))
                break
        else:
            stack.pop()
    return None


def _items(container: Any) -> Iterator[tuple[Any, Any]]:
    return iter(container.items()) if isinstance(container, dict) else enumerate(container)


def _loc(stack: list[tuple[str | int, Iterator[tuple[Any, Any]]]]) -> Loc:
    return tuple(key for key, _ in stack[1:])


class InvalidUnicode(ValueError):
    """Raised by a JSON parser: `loc` is where the bad string sits in the body."""

    def __init__(self, loc: Loc, detail: str) -> None:
        self.loc = loc
        self.param = ".".join(str(x) for x in loc) or None
        self.message = f"invalid Unicode: {detail}"
        super().__init__(f"{self.param or 'body'}: {self.message}")


def invalid_unicode_error(title: str, loc: Loc, detail: str) -> ValidationError:
    """A pydantic ValidationError at `loc`: raised in a validator, pydantic keeps its location
    (relative to the model being validated), so the API's 400 names the field."""
    error = PydanticCustomError("invalid_unicode", "invalid Unicode: {detail}", {"detail": detail})
    return ValidationError.from_exception_data(title, [InitErrorDetails(type=error, loc=loc, input=None)])


def reject_invalid_unicode(data: Any, title: str = "body") -> Any:
    """`data` unchanged, or a ValidationError naming the first string with a lone surrogate."""
    found = find_invalid_unicode(data)
    if found is not None:
        raise invalid_unicode_error(title, *found)
    return data


class ValidUnicode(BaseModel):
    """Mixin for request bodies: the raw input is checked for invalid Unicode before the fields
    are validated (so nested `dict[str, Any]` values and unknown keys are covered too)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        return reject_invalid_unicode(data, cls.__name__)
