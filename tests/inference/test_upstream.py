"""Upstream calls end to end: the official SDKs → the live gateway → fake upstreams on 127.0.0.1.

Covers same-protocol relays, both protocol translations (tools and streaming), every
fallback trigger, retries, the circuit breaker, timeouts and the audit rows they leave.
"""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest

from tests.conftest import Gateway
from tests.gateway_fixtures import Admin, uid
from tests.inference.fakes import CACHED_TOKENS, PROMPT_TOKENS, TOOL_ARGS, FakeUpstream, Step

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

TINY = "tiny-random"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },  # fmt: skip
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}


def oai(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0, timeout=60)


def claude(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0, timeout=60)


@pytest.fixture
def openai_route(admin: Admin, fake_upstream: FakeUpstream) -> tuple[str, str]:
    """(requested model, upstream model) routed to an OpenAI-compatible credential."""
    cred = admin.credential(fake_upstream, "openai_compatible")
    model, up = uid("gpt"), uid("up")
    admin.rule(model, {"credential": cred["name"], "model": up})
    return model, up


@pytest.fixture
def anthropic_route(admin: Admin, fake_upstream: FakeUpstream) -> tuple[str, str]:
    cred = admin.credential(fake_upstream, "anthropic_compatible")
    model, up = uid("claude"), uid("up")
    admin.rule(model, {"credential": cred["name"], "model": up})
    return model, up


# ---- same protocol -------------------------------------------------------------------


def test_openai_client_to_openai_upstream(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                          openai_route: tuple[str, str], admin: Admin) -> None:  # fmt: skip
    model, up = openai_route
    r = oai(routed_gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}]
    )
    assert r.choices[0].message.content == "echo: hello there"
    assert r.usage.prompt_tokens == PROMPT_TOKENS
    sent = fake_upstream.calls(up)[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == up and sent.body["messages"] == [{"role": "user", "content": "hello there"}]
    assert sent.headers["authorization"] == f"Bearer {fake_upstream.key}"
    rows = admin.wait_rows(lambda rows: len(rows) == 1, model=model)
    row = rows[0]
    assert row["backend"].startswith("cloud:cred-") and row["upstream_model"] == up
    assert (
        row["status"] == 200
        and row["prompt_tokens"] == PROMPT_TOKENS
        and row["cached_tokens"] == CACHED_TOKENS
    )
    assert row["completion_tokens"] == 3 and row["username"] == "admin" and row["rule"].startswith("rule-")


def test_openai_stream_relayed_with_usage_only_when_asked(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                                          openai_route: tuple[str, str], admin: Admin) -> None:  # fmt: skip
    model, up = openai_route
    client = oai(routed_gateway)
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "a b c"}],
                                                 stream=True))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: a b c"
    assert all(c.usage is None for c in chunks)  # the gateway asked for usage, the client didn't
    assert fake_upstream.calls(up)[-1].body["stream_options"] == {"include_usage": True}
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "a b c"}],
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].usage.completion_tokens == 4
    rows = admin.wait_rows(lambda rows: len(rows) == 2, model=model)
    assert all(
        r["stream"] and r["completion_tokens"] == 4 and r["prompt_tokens"] == PROMPT_TOKENS for r in rows
    )
    assert all(r["ttft_ms"] is not None and r["ttft_ms"] <= r["duration_ms"] for r in rows)


def test_anthropic_client_to_anthropic_upstream_stream_and_count(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                                                 anthropic_route: tuple[str, str], admin: Admin) -> None:  # fmt: skip
    model, up = anthropic_route
    client = claude(routed_gateway)
    with client.messages.stream(
        model=model, max_tokens=50, messages=[{"role": "user", "content": "hi you"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "echo: hi you"
    assert final.usage.output_tokens == 3 and final.usage.cache_read_input_tokens == CACHED_TOKENS
    sent = fake_upstream.calls(up)[-1]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == fake_upstream.key
    assert sent.headers["anthropic-version"]
    assert (
        client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "x"}]).input_tokens
        == 42
    )
    rows = admin.wait_rows(lambda rows: len(rows) == 2, model=model)
    stream_row = next(r for r in rows if r["endpoint"] == "/v1/messages")
    assert stream_row["prompt_tokens"] == PROMPT_TOKENS and stream_row["completion_tokens"] == 3
    assert stream_row["cached_tokens"] == CACHED_TOKENS and stream_row["stream"]
    assert stream_row["ttft_ms"] is not None and 0 < stream_row["ttft_ms"] <= stream_row["duration_ms"]


def test_text_completions_relayed(routed_gateway: Gateway, openai_route: tuple[str, str]) -> None:
    model, _ = openai_route
    r = oai(routed_gateway).completions.create(model=model, prompt="once upon")
    assert r.choices[0].text == "echo: once upon"
    text = "".join(c.choices[0].text for c in oai(routed_gateway).completions.create(model=model, prompt="x", stream=True)
                   if c.choices)  # fmt: skip
    assert text == "echo: x"


# ---- translation: Anthropic client → OpenAI-compatible upstream -------------------------


def test_anthropic_client_via_openai_upstream(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                              openai_route: tuple[str, str], admin: Admin) -> None:  # fmt: skip
    model, up = openai_route
    client = claude(routed_gateway)
    msg = client.messages.create(model=model, max_tokens=64, system="be brief", stop_sequences=["zz"],
                                 messages=[{"role": "user", "content": "bonjour"}])  # fmt: skip
    assert msg.content[0].text == "echo: bonjour" and msg.stop_reason == "end_turn"
    assert (
        msg.usage.input_tokens == PROMPT_TOKENS - CACHED_TOKENS
        and msg.usage.cache_read_input_tokens == CACHED_TOKENS
    )
    sent = fake_upstream.calls(up)[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["max_tokens"] == 64 and sent["stop"] == ["zz"] and sent["model"] == up

    # tools, not streamed: a tool_use block, then the tool result goes back as a `tool` message
    msg = client.messages.create(model=model, max_tokens=64, tools=[WEATHER_TOOL_ANTHROPIC],
                                 tool_choice={"type": "any"},
                                 messages=[{"role": "user", "content": "weather in Paris?"}])  # fmt: skip
    assert msg.stop_reason == "tool_use"
    call = msg.content[0]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == json.loads(TOOL_ARGS)
    sent = fake_upstream.calls(up)[-1].body
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["tool_choice"] == "required"
    follow = client.messages.create(
        model=model, max_tokens=64, tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[{"role": "user", "content": "weather in Paris?"},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C"}]}],
    )  # fmt: skip
    assert follow.content[0].text == "tool said: 18C"
    sent = fake_upstream.calls(up)[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id and sent[2] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": "18C",
    }


def test_anthropic_client_via_openai_upstream_streaming_tools(routed_gateway: Gateway, openai_route: tuple[str, str],
                                                              admin: Admin) -> None:  # fmt: skip
    model, _ = openai_route
    client = claude(routed_gateway)
    with client.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "one two"}]
    ) as s:
        assert "".join(s.text_stream) == "echo: one two"
        final = s.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    with client.messages.stream(model=model, max_tokens=64, tools=[WEATHER_TOOL_ANTHROPIC],
                                messages=[{"role": "user", "content": "weather?"}]) as s:  # fmt: skip
        events = [e.type for e in s]
        final = s.get_final_message()
    assert events[0] == "message_start" and "content_block_start" in events and events[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == json.loads(TOOL_ARGS)
    rows = admin.wait_rows(lambda rows: len(rows) == 2, model=model)
    assert {r["completion_tokens"] for r in rows} == {3, 9}
    assert all(r["stream"] and r["prompt_tokens"] == PROMPT_TOKENS for r in rows)
    assert all(r["ttft_ms"] is not None and 0 < r["ttft_ms"] <= r["duration_ms"] for r in rows)


# ---- translation: OpenAI client → Anthropic upstream -------------------------------------


def test_openai_client_via_anthropic_upstream(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                              anthropic_route: tuple[str, str]) -> None:  # fmt: skip
    model, up = anthropic_route
    client = oai(routed_gateway)
    r = client.chat.completions.create(model=model, messages=[{"role": "system", "content": "terse"},
                                                              {"role": "user", "content": "ciao"}], max_tokens=30)  # fmt: skip
    assert r.choices[0].message.content == "echo: ciao" and r.choices[0].finish_reason == "stop"
    assert (
        r.usage.prompt_tokens == PROMPT_TOKENS
        and r.usage.prompt_tokens_details.cached_tokens == CACHED_TOKENS
    )
    sent = fake_upstream.calls(up)[-1].body
    assert sent["system"] == "terse" and sent["max_tokens"] == 30
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "ciao"}]}]

    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "weather?"}],
                                       tools=[WEATHER_TOOL], tool_choice="required")  # fmt: skip
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == json.loads(
        TOOL_ARGS
    )
    sent = fake_upstream.calls(up)[-1].body
    assert sent["tools"][0]["input_schema"] == WEATHER_TOOL["function"]["parameters"] and sent[
        "tool_choice"
    ] == {"type": "any"}
    r = client.chat.completions.create(model=model, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "21C"}])  # fmt: skip
    assert r.choices[0].message.content == "tool said: 21C"
    sent = fake_upstream.calls(up)[-1].body["messages"]
    assert sent[1]["content"][0]["type"] == "tool_use" and sent[2]["content"][0]["type"] == "tool_result"


def test_openai_client_via_anthropic_upstream_streaming(routed_gateway: Gateway, anthropic_route: tuple[str, str],
                                                        admin: Admin) -> None:  # fmt: skip
    model, _ = anthropic_route
    client = oai(routed_gateway)
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x y"}], stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: x y"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "w?"}],
                                                 tools=[WEATHER_TOOL], stream=True))  # fmt: skip
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "toolu_fake1" and calls[0].function.name == "get_weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == json.loads(TOOL_ARGS)
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and chunks[-1].usage is None
    rows = admin.wait_rows(lambda rows: len(rows) == 2, model=model)
    assert {r["completion_tokens"] for r in rows} == {3, 9}
    assert all(r["stream"] and r["prompt_tokens"] == PROMPT_TOKENS for r in rows)
    assert all(r["ttft_ms"] is not None and 0 < r["ttft_ms"] <= r["duration_ms"] for r in rows)


def test_untranslatable_parameters_are_refused_by_name(
    routed_gateway: Gateway, anthropic_route: tuple[str, str]
) -> None:
    model, _ = anthropic_route
    with pytest.raises(openai.BadRequestError) as err:
        oai(routed_gateway).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], seed=3
        )
    assert "seed" in str(err.value)
    with pytest.raises(openai.BadRequestError):
        oai(routed_gateway).chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                                    temperature=1.5)  # fmt: skip


# ---- streaming is end to end --------------------------------------------------------


def test_first_byte_reaches_the_client_before_the_answer_ends(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                                              openai_route: tuple[str, str]) -> None:  # fmt: skip
    model, up = openai_route
    fake_upstream.script(up, Step(chunk_delay=0.4))
    start = time.monotonic()
    seen: list[float] = []
    for c in oai(routed_gateway).chat.completions.create(model=model, stream=True,
                                                         messages=[{"role": "user", "content": "a b c d"}]):  # fmt: skip
        if c.choices and c.choices[0].delta.content:
            seen.append(time.monotonic() - start)
    assert len(seen) == 5
    assert seen[0] < 1.0 and seen[-1] > 1.8  # the first word came long before the last


def test_mid_stream_failure_ends_the_stream_with_an_error(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                                          openai_route: tuple[str, str], admin: Admin) -> None:  # fmt: skip
    model, up = openai_route
    fake_upstream.script(up, Step(drop_midstream=True))
    with pytest.raises(openai.APIError) as err:
        list(oai(routed_gateway).chat.completions.create(model=model, stream=True,
                                                         messages=[{"role": "user", "content": "a b c d e"}]))  # fmt: skip
    assert "mid-stream" in str(err.value)
    assert len(fake_upstream.calls(up)) == 1  # no retry after the first byte
    rows = admin.wait_rows(lambda rows: len(rows) == 1, model=model)
    assert rows[0]["error_type"] == "upstream_stream_error"


# ---- routing order ------------------------------------------------------------------


def test_rules_apply_in_order_and_reorder(
    routed_gateway: Gateway, fake_upstream: FakeUpstream, admin: Admin
) -> None:
    cred = admin.credential(fake_upstream, "openai_compatible")["name"]
    stem = uid("ord")
    glob = admin.rule(f"{stem}-*", {"credential": cred, "model": "from-glob"}, match_type="glob")
    exact = admin.rule(f"{stem}-1", {"credential": cred, "model": "from-exact"})
    rx = admin.rule(rf"^{stem}-\d+x$", {"credential": cred, "model": "from-regex"}, match_type="regex")
    client = oai(routed_gateway)

    def served(model: str) -> str:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "q"}])
        return fake_upstream.requests[-1].body["model"]

    assert served(f"{stem}-1") == "from-glob"  # the glob comes first
    assert served(f"{stem}-22x") == "from-glob"
    assert admin.ok("GET", "/rules/match", params={"model": f"{stem}-1"})["rule"] == glob["name"]
    ids = [r["id"] for r in admin.ok("GET", "/rules/")]
    ids.remove(exact["id"])
    ids.remove(rx["id"])
    admin.ok("POST", "/rules/order", json={"ids": [exact["id"], rx["id"], *ids]})
    assert served(f"{stem}-1") == "from-exact"
    assert served(f"{stem}-22x") == "from-regex"
    admin.ok("PATCH", f"/rules/{exact['id']}", json={"enabled": False})
    assert served(f"{stem}-1") == "from-glob"
    listed = [r["name"] for r in admin.ok("GET", "/rules/")]
    assert listed.index(exact["name"]) < listed.index(rx["name"]) < listed.index(glob["name"])


def test_models_without_a_rule_are_served_by_local_profile(routed_gateway: Gateway, admin: Admin) -> None:
    r = oai(routed_gateway).chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert r.model == TINY
    assert admin.ok("GET", "/rules/match", params={"model": TINY})["targets"][0]["label"] == f"local:{TINY}"
    with pytest.raises(openai.NotFoundError):
        oai(routed_gateway).chat.completions.create(
            model=uid("nothing"), messages=[{"role": "user", "content": "x"}]
        )


def test_rule_to_a_local_profile(routed_gateway: Gateway, admin: Admin) -> None:
    alias = uid("alias")
    admin.rule(alias, {"profile": TINY})
    r = oai(routed_gateway).chat.completions.create(
        model=alias, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert r.choices[0].message.content is not None and r.usage.completion_tokens > 0
    rows = admin.wait_rows(lambda rows: len(rows) == 1, model=alias)
    assert rows[0]["backend"] == f"local:{TINY}" and rows[0]["completion_tokens"] == r.usage.completion_tokens


# ---- fallbacks ----------------------------------------------------------------------


def _fallback_case(
    admin: Admin, fake: FakeUpstream, first: dict[str, str], **rule: object
) -> tuple[str, str]:
    cred = admin.credential(fake, "openai_compatible")["name"]
    model, backup = uid("fb"), uid("backup")
    admin.rule(model, first, {"credential": cred, "model": backup}, **rule)  # type: ignore[arg-type]
    return model, backup


@pytest.mark.parametrize(
    "failure", ["500", "503", "429", "drop", "timeout", "refused", "bad-key", "missing-local", "disabled"]
)
def test_every_fallback_trigger(
    failure: str, routed_gateway: Gateway, fake_upstream: FakeUpstream, admin: Admin
) -> None:
    cred = admin.credential(fake_upstream, "openai_compatible")
    primary = uid("primary")
    first = {"credential": cred["name"], "model": primary}
    timeout_s = None
    if failure in ("500", "503", "429"):
        fake_upstream.always(
            primary, Step(status=int(failure), retry_after="0" if failure == "429" else None)
        )
    elif failure == "drop":
        fake_upstream.always(primary, Step(drop=True))
    elif failure == "timeout":
        fake_upstream.always(primary, Step(delay=2.5))
        timeout_s = 0.8
    elif failure == "refused":
        from tests.conftest import free_port

        dead = admin.ok("POST", "/credentials/", json={"name": uid("dead"), "provider": "openai_compatible",
                                                       "base_url": f"http://127.0.0.1:{free_port()}/v1", "secret": "k"})  # fmt: skip
        first = {"credential": dead["name"], "model": primary}
    elif failure == "bad-key":
        wrong = admin.credential(fake_upstream, "openai_compatible", key="sk-wrong-key")
        first = {"credential": wrong["name"], "model": primary}
    elif failure == "missing-local":
        first = {"profile": "no-such-profile"}
    elif failure == "disabled":
        admin.ok("PATCH", f"/credentials/{cred['id']}", json={"enabled": False})
    model, backup = _fallback_case(admin, fake_upstream, first, timeout_s=timeout_s)
    r = oai(routed_gateway).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "echo: hi"
    assert fake_upstream.calls(backup)
    rows = admin.wait_rows(lambda rows: len(rows) == 1, model=model)
    assert rows[0]["status"] == 200 and rows[0]["upstream_model"] == backup
    assert rows[0]["attempts"] == (1 if failure == "disabled" else 2)
    fake_upstream.always(primary, None)


def test_cloud_failure_falls_back_to_a_local_profile(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                                     admin: Admin) -> None:  # fmt: skip
    cred = admin.credential(fake_upstream, "anthropic_compatible")["name"]
    model, primary = uid("cl"), uid("primary")
    fake_upstream.always(primary, Step(status=529))
    admin.rule(model, {"credential": cred, "model": primary}, {"profile": TINY})
    with claude(routed_gateway).messages.stream(
        model=model, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        final = s.get_final_message()
    assert final.usage.output_tokens > 0
    rows = admin.wait_rows(lambda rows: len(rows) == 1, model=model)
    assert rows[0]["backend"] == f"local:{TINY}" and rows[0]["attempts"] == 2
    assert rows[0]["completion_tokens"] == final.usage.output_tokens


def test_client_errors_from_the_upstream_are_not_retried(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                                         admin: Admin) -> None:  # fmt: skip
    cred = admin.credential(fake_upstream, "openai_compatible")["name"]
    primary = uid("bad")
    model, backup = _fallback_case(admin, fake_upstream, {"credential": cred, "model": primary})
    fake_upstream.script(primary, Step(status=400, message="bad thing"))
    with pytest.raises(openai.BadRequestError) as err:
        oai(routed_gateway).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert "bad thing" in str(err.value)
    assert len(fake_upstream.calls(primary)) == 1 and not fake_upstream.calls(backup)


def test_when_every_target_fails_the_client_gets_the_last_error(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                                                admin: Admin) -> None:  # fmt: skip
    cred_a = admin.credential(fake_upstream, "openai_compatible")["name"]
    cred_b = admin.credential(fake_upstream, "openai_compatible")["name"]
    model, a, b = uid("all"), uid("a"), uid("b")
    fake_upstream.always(a, Step(status=500))
    fake_upstream.always(b, Step(status=429, retry_after="0"))
    admin.rule(model, {"credential": cred_a, "model": a}, {"credential": cred_b, "model": b})
    with pytest.raises(openai.RateLimitError) as err:
        oai(routed_gateway).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert "tried" in str(err.value)
    with pytest.raises(anthropic.RateLimitError):
        claude(routed_gateway).messages.create(
            model=model, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    rows = admin.wait_rows(lambda rows: len(rows) == 2, model=model)
    assert all(r["status"] == 429 and r["attempts"] == 2 and r["error_type"] == "rate_limited" for r in rows)


def test_retries_before_the_first_byte(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                       openai_route: tuple[str, str]) -> None:  # fmt: skip
    model, up = openai_route
    fake_upstream.script(up, Step(status=502))
    r = oai(routed_gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "again"}]
    )
    assert r.choices[0].message.content == "echo: again"
    assert len(fake_upstream.calls(up)) == 2


def test_circuit_breaker_opens_skips_and_recovers(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                                  admin: Admin) -> None:  # fmt: skip
    cred = admin.credential(fake_upstream, "openai_compatible")["name"]
    backup_cred = admin.credential(fake_upstream, "openai_compatible")["name"]
    model, flaky, backup = uid("cb"), uid("flaky"), uid("backup")
    admin.rule(model, {"credential": cred, "model": flaky}, {"credential": backup_cred, "model": backup})
    fake_upstream.always(flaky, Step(status=500))
    client = oai(routed_gateway)
    msgs = [{"role": "user", "content": "x"}]
    for _ in range(2):  # 2 requests x (1 try + 1 retry) = 4 failures: the breaker opens
        client.chat.completions.create(model=model, messages=msgs)
    assert len(fake_upstream.calls(flaky)) == 4
    for _ in range(3):  # open: skipped at once, the backup answers
        assert (
            client.chat.completions.create(model=model, messages=msgs).choices[0].message.content == "echo: x"
        )
    assert len(fake_upstream.calls(flaky)) == 4
    fake_upstream.always(flaky, None)
    time.sleep(1.7)  # cooldown: one trial call goes through, succeeds, the breaker closes
    client.chat.completions.create(model=model, messages=msgs)
    client.chat.completions.create(model=model, messages=msgs)
    assert len(fake_upstream.calls(flaky)) == 6


def test_local_overload_falls_back_to_the_cloud(
    demo_models: dict, tmp_path, fake_upstream: FakeUpstream
) -> None:  # type: ignore[type-arg]
    """A worker that can't fit the model answers `overloaded`: the rule's next target serves."""
    from tests.conftest import stop_gateway
    from tests.gateway_fixtures import start_routed_gateway

    gw = start_routed_gateway(tmp_path / "gw", demo_models, env={"MLXM_MEMORY_LIMIT_BYTES": "1000"})
    try:
        admin = Admin(gw)
        cred = admin.credential(fake_upstream, "openai_compatible")["name"]
        admin.rule("busy", {"profile": TINY}, {"credential": cred, "model": "cloud-backup"})
        with pytest.raises(openai.InternalServerError):  # without a rule: the overload reaches the client
            oai(gw).chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}])
        r = oai(gw).chat.completions.create(model="busy", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "echo: hi"
        rows = admin.wait_rows(lambda rows: len(rows) == 2)
        assert (
            rows[0]["requested_model"] == "busy"
            and rows[0]["attempts"] == 2
            and rows[0]["backend"].startswith("cloud:")
        )
        assert (
            rows[1]["requested_model"] == TINY
            and rows[1]["status"] == 503
            and rows[1]["error_type"] == "overloaded"
        )
    finally:
        stop_gateway(gw)


# ---- unit level ---------------------------------------------------------------------


def test_breaker_states_with_a_fake_clock() -> None:
    from inference.upstream import Breaker

    now = [0.0]
    b = Breaker(failures_to_open=2, cooldown_s=10, clock=lambda: now[0])
    assert b.allow() and b.state == "closed"
    b.failure()
    assert b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 10.0
    assert b.state == "half-open" and b.allow() and not b.allow()  # one trial at a time
    b.failure()  # the trial failed: open again for a full cooldown
    assert b.state == "open" and not b.allow()
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.failures == 0


def test_retry_after_parsing() -> None:
    from inference.upstream import _retry_after

    assert _retry_after("2") == 2.0 and _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
