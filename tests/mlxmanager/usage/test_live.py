"""Budgets on the live gateway through the official SDKs: past a key's budget, a 429 with the
code `budget_exceeded` and a Retry-After until the UTC day resets, in both shapes; the usage
page's figures come from the same requests."""

from __future__ import annotations

import os
import time

import anthropic
import openai
import pytest

from tests.conftest import Gateway, manage

TINY = "tiny-random"
HELLO = [{"role": "user", "content": "hello there"}]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]


def env_of(gw: Gateway) -> dict[str, str]:
    env = {**os.environ, "MLXM_DATA_DIR": str(gw.data_dir), "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}
    env.pop("DATABASE_URL", None)
    return env


def key_with_budget(gw: Gateway, budget: str) -> str:
    """A new key of the admin, with a budget set the way /api and the budgets page set it."""
    name = f"budget-{time.monotonic_ns()}"
    secret = (
        manage("create_api_key", "--username", "admin", "--name", name, env=env_of(gw))
        .strip()
        .splitlines()[-1]
    )
    code = (
        "from mlxmanager.accounts.models import ApiKey; from mlxmanager.usage.services import set_budget; "
        f"set_budget(api_key_id=ApiKey.objects.get(name={name!r}).pk, {budget})"
    )
    manage("shell", "-c", code, env=env_of(gw))
    return secret


def test_key_budget_429_budget_exceeded_in_both_sdks(gateway: Gateway) -> None:
    secret = key_with_budget(gateway, "tokens_per_day=30")
    c = openai.OpenAI(base_url=gateway.v1, api_key=secret, max_retries=0, timeout=120)
    stream = c.chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=24, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in stream if chunk.usage][-1]
    assert usage.total_tokens > 30
    deadline = time.monotonic() + 10  # counted as the stream's audit row is recorded
    while True:
        try:
            c.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "budget_exceeded" and exc.body["type"] == "rate_limit_error"
            assert "30 tokens for today" in exc.body["message"]
            assert 0 < int(exc.response.headers["retry-after"]) <= 86400
            break
        assert time.monotonic() < deadline, "the stream's tokens were not counted against the budget"
        time.sleep(0.2)
    ant = anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as aexc:
        ant.messages.create(model=TINY, max_tokens=2, messages=HELLO)  # type: ignore[arg-type]
    body = aexc.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "budget_exceeded"
    assert 0 < int(aexc.value.response.headers["retry-after"]) <= 86400
    # The key's other traffic is untouched: the gateway's own test key still works.
    assert gateway.openai().chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).choices


def test_key_month_budget_in_anthropic_shape_first(gateway: Gateway) -> None:
    secret = key_with_budget(gateway, "tokens_per_month=20")
    ant = anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)
    msg = ant.messages.create(model=TINY, max_tokens=24, messages=HELLO)  # type: ignore[arg-type]
    assert msg.usage.input_tokens + msg.usage.output_tokens > 20
    deadline = time.monotonic() + 10
    while True:
        try:
            ant.messages.create(model=TINY, max_tokens=2, messages=HELLO)  # type: ignore[arg-type]
        except anthropic.RateLimitError as exc:
            assert (
                exc.body["error"]["code"] == "budget_exceeded"
                and "this month" in exc.body["error"]["message"]
            )
            # Until the 1st of next month, UTC: more than 0, at most 31 days.
            assert 0 < int(exc.response.headers["retry-after"]) <= 31 * 86400
            break
        assert time.monotonic() < deadline, "the tokens were not counted against the month's budget"
        time.sleep(0.2)
