"""A fresh install served by `manage.py serve` and its real worker: Claude Code's model names
answered by the default local model with no rule written by hand, and a queue limit changed on
the Settings API taking effect in the running worker (429), with no restart."""

from __future__ import annotations

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

SMOL = "smollm2-135m-instruct"  # the demo install's default profile
RULE = "Cloud model names → default model"


@pytest.fixture(scope="module")
def fresh(demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_routed_gateway(tmp_path_factory.mktemp("fresh"), demo_models)
    yield gw
    stop_gateway(gw)


def test_claude_code_names_reach_the_default_local_model(fresh: Gateway) -> None:
    admin = Admin(fresh)
    (rule,) = [r for r in admin.ok("GET", "/rules/") if r["name"] == RULE]
    assert rule["pattern"] == "claude-*" and rule["targets"] == [
        {"profile": "@default", "credential": "", "model": ""}
    ]

    client = anthropic.Anthropic(base_url=fresh.url, api_key=fresh.key, max_retries=0, timeout=120)
    tools: list[Any] = [
        {"name": "Read", "description": "Read a file.", "input_schema": {
            "type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}},
        {"name": "Bash", "description": "Run a command.", "input_schema": {
            "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}},
    ]  # fmt: skip
    reply = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=24,
        system=[{"type": "text", "text": "You are Claude Code, a coding assistant.\n\n# Tone\nBe brief."}],
        messages=[{"role": "user", "content": "Say hello."}],
        tools=tools,
    )
    assert reply.role == "assistant" and reply.content and reply.usage.output_tokens > 0
    assert reply.stop_reason in ("end_turn", "max_tokens", "tool_use")
    rows = admin.wait_rows(lambda rows: any(r["requested_model"] == "claude-sonnet-4-5" for r in rows))
    row = next(r for r in rows if r["requested_model"] == "claude-sonnet-4-5")
    assert row["rule"] == RULE and row["status"] == 200 and row["backend"] == "local:@default"

    # Streaming, as Claude Code asks, and its small model's name too.
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=8,
                                messages=[{"role": "user", "content": "Hi"}]) as stream:  # fmt: skip
        final = stream.get_final_message()
    assert final.content and final.usage.output_tokens > 0


def test_a_queue_limit_saved_in_settings_applies_to_the_running_worker(fresh: Gateway) -> None:
    admin = Admin(fresh)
    admin.ok("PATCH", f"/profiles/{SMOL}", json={"max_concurrent": 1})
    saved = admin.ok("PATCH", "/settings", json={"max_queue": 0})
    assert saved["changed"] == ["max_queue"] and saved["worker"].startswith("the worker applied")
    client = fresh.openai()
    endless = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "endless"}],
        max_tokens=8000,
        stream=True,
        logit_bias={"0": -100, "1": -100, "2": -100},
    )
    try:
        assert next(iter(endless)).id
        # The model's one row is busy and no request may wait: refused at once.
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(
                model=SMOL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        assert caught.value.status_code == 429 and int(caught.value.response.headers["retry-after"]) >= 1
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "queue_full"
    finally:
        endless.close()
    # Cleared: back to the environment's default (no limit), again without a restart.
    assert admin.ok("PATCH", "/settings", json={"max_queue": None})["worker"].startswith("the worker applied")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the aborted stream's row frees within a step
        try:
            r = client.chat.completions.create(
                model=SMOL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            break
        except openai.RateLimitError:
            time.sleep(0.2)
    assert r.choices[0].message.content is not None
    actions = admin.ok("GET", "/audit/actions")
    assert len([a for a in actions if a["action"] == "mlxmanager.settings.changed"]) == 2
