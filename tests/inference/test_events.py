"""Worker and engine failures in API-neutral terms, then in each API's shape."""

from __future__ import annotations

import json

from inference import encoders
from inference import protocol as p
from inference.client import EngineRequestError
from inference.events import failure_of


def test_a_full_queue_is_a_429_with_retry_after_in_both_shapes() -> None:
    f = failure_of(EngineRequestError(p.ERR_QUEUE_FULL, "the queue for 'm' is full", retry_after=2.2))
    assert f is not None and (f.status, f.code, f.type_, f.retry_after) == (
        429,
        "queue_full",
        "rate_limit_error",
        3,
    )
    openai = encoders.error_response(encoders.OPENAI, f)
    assert openai.status_code == 429 and openai["Retry-After"] == "3"
    assert json.loads(openai.content)["error"] == {
        "message": "the queue for 'm' is full", "type": "rate_limit_error", "param": None, "code": "queue_full"
    }  # fmt: skip
    anthropic = encoders.error_response(encoders.ANTHROPIC, f)
    assert anthropic.status_code == 429 and anthropic["Retry-After"] == "3"
    assert json.loads(anthropic.content)["error"]["type"] == "rate_limit_error"


def test_retry_after_is_at_least_a_second() -> None:
    for given in (None, 0.0, 0.3):
        f = failure_of(EngineRequestError(p.ERR_QUEUE_FULL, "full", retry_after=given))
        assert f is not None and f.retry_after == 1


def test_a_queue_timeout_is_a_503_without_retry_after() -> None:
    f = failure_of(EngineRequestError(p.ERR_QUEUE_TIMEOUT, "waited too long"))
    assert f is not None and (f.status, f.code, f.type_, f.retry_after) == (
        503,
        "queue_timeout",
        "server_error",
        None,
    )
    anthropic = encoders.error_response(encoders.ANTHROPIC, f)
    assert anthropic.status_code == 503 and "Retry-After" not in anthropic
