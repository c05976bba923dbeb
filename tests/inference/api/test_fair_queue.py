"""The worker's fair queue end to end: a live gateway (`manage.py serve` and its worker) with
MLXM_MAX_QUEUE and MLXM_QUEUE_TIMEOUT set, the real openai and anthropic SDKs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import Gateway, stop_gateway
from tests.gateway_fixtures import Admin, start_routed_gateway

pytestmark = [pytest.mark.slow]

SMOL = "smollm2-135m-instruct"
QUEUE_TIMEOUT_S = 6


@pytest.fixture
def queued_gateway(demo_models: dict[str, Path], tmp_path: Path) -> Iterator[Gateway]:
    """One request may wait per model, for at most QUEUE_TIMEOUT_S; SmolLM2 runs one at a time."""
    env = {"MLXM_MAX_QUEUE": "1", "MLXM_QUEUE_TIMEOUT": str(QUEUE_TIMEOUT_S)}
    gw = start_routed_gateway(tmp_path / "gw", demo_models, env)
    try:
        Admin(gw).ok("PATCH", f"/profiles/{SMOL}", json={"max_concurrent": 1})
        yield gw
    finally:
        stop_gateway(gw)


def _queue_depth(gw: Gateway) -> int:
    return int(gw.health().json()["worker"]["queue_depth"])


def test_a_full_queue_answers_429_with_retry_after_and_a_long_wait_503(queued_gateway: Gateway) -> None:
    gw = queued_gateway
    client = gw.openai()
    # SmolLM2 (tens of tokens/s on a CPU) with its end-of-text tokens banned: it holds the
    # model's one row for the whole test.
    endless = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "endless"}],
        max_tokens=8000,
        stream=True,
        logit_bias={"0": -100, "1": -100, "2": -100},
    )
    assert next(iter(endless)).id

    # A second request waits in the queue (its only place) until it times out.
    waited: dict[str, Any] = {}

    def wait_in_queue() -> None:
        try:
            client.chat.completions.create(
                model=SMOL, messages=[{"role": "user", "content": "I wait"}], max_tokens=4
            )
        except openai.APIStatusError as exc:
            waited["error"] = exc

    waiter = threading.Thread(target=wait_in_queue)
    waiter.start()
    for _ in range(200):
        if _queue_depth(gw) >= 1:
            break
        time.sleep(0.05)
    assert _queue_depth(gw) == 1

    # A third finds the queue full: 429 in OpenAI's shape, with Retry-After...
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": "full"}], max_tokens=4
        )
    err = caught.value
    assert err.status_code == 429 and int(err.response.headers["retry-after"]) >= 1
    assert isinstance(err.body, dict) and err.body["code"] == "queue_full"
    assert err.body["type"] == "rate_limit_error" and "MLXM_MAX_QUEUE" in err.body["message"]

    # ... and in Anthropic's.
    claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0, timeout=120)
    with pytest.raises(anthropic.RateLimitError) as caught_a:
        claude.messages.create(model=SMOL, max_tokens=4, messages=[{"role": "user", "content": "full"}])
    err_a = caught_a.value
    assert err_a.status_code == 429 and int(err_a.response.headers["retry-after"]) >= 1
    assert isinstance(err_a.body, dict) and err_a.body["error"]["type"] == "rate_limit_error"

    # The waiting request gets a 503 once it has waited MLXM_QUEUE_TIMEOUT.
    waiter.join(timeout=QUEUE_TIMEOUT_S + 60)
    timeout_error = waited["error"]
    assert timeout_error.status_code == 503
    assert (
        timeout_error.body["code"] == "queue_timeout"
        and "MLXM_QUEUE_TIMEOUT" in timeout_error.body["message"]
    )
    assert _queue_depth(gw) == 0
    endless.close()
