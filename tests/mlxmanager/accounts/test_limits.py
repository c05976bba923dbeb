"""Per-key limits: unit tests of the counters, then the live gateway through the official SDKs
(expiry, allowed models, requests per minute, tokens per day counted from a finished stream)."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace
from typing import Any

import anthropic
import openai
import pytest

from mlxmanager.accounts import limits
from tests.conftest import Gateway, manage

TINY = "tiny-random"
SMOL = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(autouse=True)
def _fresh_counters() -> Any:
    limits.reset()
    yield
    limits.reset()


def key(pk: int = 1, **kw: Any) -> Any:
    return SimpleNamespace(
        **{"pk": pk, "rpm_limit": None, "tokens_per_day": None, "allowed_models": [], **kw}
    )


def test_requests_per_minute_slide(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(limits, "_clock", lambda: now[0])
    k = key(rpm_limit=2)
    asyncio.run(limits.check_request(k))
    now[0] += 10
    asyncio.run(limits.check_request(k))
    with pytest.raises(limits.RateLimited) as exc:
        asyncio.run(limits.check_request(k))
    assert (
        exc.value.status == 429
        and exc.value.retry_after == 50
        and "2 requests per minute" in exc.value.message
    )
    now[0] += 50  # the first request leaves the window
    asyncio.run(limits.check_request(k))


@pytest.mark.django_db
def test_tokens_per_day_count_what_is_recorded() -> None:
    k = key(pk=7, tokens_per_day=100)
    asyncio.run(limits.check_request(k))  # seeds today's count from the (empty) log
    limits.add_tokens(7, 60)
    asyncio.run(limits.check_request(k))
    limits.add_tokens(7, 40)
    with pytest.raises(limits.RateLimited) as exc:
        asyncio.run(limits.check_request(k))
    assert 0 < exc.value.retry_after <= 86400 and "midnight UTC" in exc.value.message


def test_allowed_models() -> None:
    from mlxmanager.accounts.models import ApiKey

    k = ApiKey(allowed_models=["a", "b"])
    limits.check_model(k, "a")
    with pytest.raises(limits.ModelNotAllowed) as exc:
        limits.check_model(k, "c")
    assert exc.value.status == 403 and exc.value.param == "model"
    limits.check_model(ApiKey(allowed_models=[]), "anything")  # empty: every model


def test_allowed_glob_pattern_matches_like_its_rule() -> None:
    from mlxmanager.accounts.models import ApiKey

    k = ApiKey(allowed_models=["claude-*", "tiny-random"])
    assert k.allows("claude-sonnet-4-5") and k.allows("tiny-random")
    assert not k.allows("gpt-4o") and not k.allows("xclaude-1") and not k.allows("Claude-3")


# ---- live, through the SDKs ------------------------------------------------------------


def new_key(gw: Gateway, *args: str) -> str:
    env = {**os.environ, "MLXM_DATA_DIR": str(gw.data_dir), "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}
    env.pop("DATABASE_URL", None)
    out = manage(
        "create_api_key", "--username", "admin", "--name", f"limits-{time.monotonic_ns()}", *args, env=env
    )
    return out.strip().splitlines()[-1]


def client(gw: Gateway, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=secret, max_retries=0, timeout=120)


@pytest.mark.slow
@pytest.mark.xdist_group("live")
def test_live_allowed_models_and_expiry(gateway: Gateway) -> None:
    only_tiny = client(gateway, new_key(gateway, "--models", TINY))
    assert only_tiny.chat.completions.create(model=TINY, messages=HELLO, max_tokens=4).choices
    # /v1/models lists only what the key may use; another model is as unknown as a missing one.
    assert [m.id for m in only_tiny.models.list()] == [TINY]
    assert only_tiny.models.retrieve(TINY).id == TINY
    with pytest.raises(openai.NotFoundError):
        only_tiny.models.retrieve(SMOL)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        only_tiny.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=4)
    assert exc.value.body["param"] == "model" and SMOL in exc.value.body["message"]

    before = time.monotonic()
    soon = client(gateway, new_key(gateway, "--expires-days", "0.0002"))  # about 17 s
    after = time.monotonic()  # the key was made between `before` and `after`
    # Used well inside its life (a loaded machine can take seconds per call), then after it.
    assert soon.models.list().data
    assert time.monotonic() - before < 17, "the machine was too slow to use the key before it expired"
    time.sleep(max(0.0, 18 - (time.monotonic() - after)))
    with pytest.raises(openai.AuthenticationError):
        soon.models.list()


@pytest.mark.slow
@pytest.mark.xdist_group("live")
def test_live_requests_per_minute_429_with_retry_after(gateway: Gateway) -> None:
    c = client(gateway, new_key(gateway, "--rpm", "2"))
    for _ in range(2):
        c.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as exc:
        c.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)
    assert 0 < int(exc.value.response.headers["retry-after"]) <= 60
    assert (
        exc.value.body["type"] == "rate_limit_error" and "2 requests per minute" in exc.value.body["message"]
    )


@pytest.mark.slow
@pytest.mark.xdist_group("live")
def test_live_tokens_per_day_counted_from_a_stream_in_both_shapes(gateway: Gateway) -> None:
    secret = new_key(gateway, "--tokens-per-day", "30")
    c = client(gateway, secret)
    stream = c.chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=24, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in stream if chunk.usage][-1]
    assert usage.total_tokens > 30
    deadline = time.monotonic() + 10  # the row is recorded as the stream closes
    while True:
        try:
            c.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)
        except openai.RateLimitError as exc:
            assert "30 tokens for today" in exc.body["message"]
            assert int(exc.response.headers["retry-after"]) > 0
            break
        assert time.monotonic() < deadline, "the stream's tokens were not counted"
        time.sleep(0.2)
    ant = anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as aexc:
        ant.messages.create(model=TINY, max_tokens=2, messages=HELLO)  # type: ignore[arg-type]
    assert aexc.value.body["type"] == "error" and aexc.value.body["error"]["type"] == "rate_limit_error"
