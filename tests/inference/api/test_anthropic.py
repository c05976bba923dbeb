"""End to end: the official `anthropic` SDK against the live gateway (uvicorn + worker)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import Gateway

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

TINY = "tiny-random"
SMOL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
HEADERS = {"anthropic-version": "2023-06-01", "content-type": "application/json"}


def claude(gw: Gateway, **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("api_key", gw.key)
    return anthropic.Anthropic(base_url=gw.url, max_retries=0, timeout=120, **kw)


def sdk(**kw: Any) -> dict[str, Any]:
    """This SDK generation no longer types temperature/top_p/top_k: they travel in extra_body."""
    extra = {k: kw.pop(k) for k in ("temperature", "top_p", "top_k") if k in kw}
    if extra:
        kw["extra_body"] = {**kw.get("extra_body", {}), **extra}
    return kw


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def tiny(gw: Gateway, content: str = "hello there", **kw: Any) -> Any:
    kw.setdefault("max_tokens", 24)
    return claude(gw).messages.create(
        **sdk(model=TINY, messages=[{"role": "user", "content": content}], **kw)
    )


def sse(r: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs; every event must carry both lines."""
    events = []
    for chunk in r.text.strip().split("\n\n"):
        name, data = chunk.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        events.append((name[7:], json.loads(data[6:])))
    return events


# ---- answers from a real model --------------------------------------------------------


def test_smollm2_answers_non_streaming(gateway: Gateway) -> None:
    m = claude(gateway).messages.create(**sdk(model=SMOL, messages=FRANCE, max_tokens=20, temperature=0))
    assert m.type == "message" and m.role == "assistant"
    assert m.model == SMOL
    assert m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"]
    assert "Paris" in text_of(m)
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    u = m.usage
    assert u.input_tokens + u.cache_read_input_tokens > 10
    assert u.cache_creation_input_tokens == 0
    assert 0 < u.output_tokens <= 20


def test_smollm2_streams_through_the_sdk(gateway: Gateway) -> None:
    with claude(gateway).messages.stream(
        **sdk(model=SMOL, messages=FRANCE, max_tokens=20, temperature=0)
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Paris" in text
    assert text_of(final) == text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens > 10
    assert 0 < final.usage.output_tokens <= 20


def test_assistant_prefill_is_continued(gateway: Gateway) -> None:
    prefill = [*FRANCE, {"role": "assistant", "content": "The capital of France is"}]
    m = claude(gateway).messages.create(**sdk(model=SMOL, messages=prefill, max_tokens=6, temperature=0))
    assert "Paris" in text_of(m)
    assert not text_of(m).startswith("The capital")


def test_raw_event_sequence(gateway: Gateway) -> None:
    r = httpx.post(
        gateway.v1 + "/messages",
        json={
            "model": TINY,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6,
            "stream": True,
        },
        headers={
            **HEADERS,
            "x-api-key": gateway.key,
            "anthropic-beta": "fine-grained-tool-streaming-2025-05-14",
        },
        timeout=60,
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = names[3:-3]
    assert deltas and set(deltas) == {"content_block_delta"}
    assert all(data["type"] == name for name, data in events)

    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] + start["usage"]["cache_read_input_tokens"] > 0
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for _, d in events[3:-3])
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 6


# ---- parameters -----------------------------------------------------------------------


def test_max_tokens_stops_with_max_tokens(gateway: Gateway) -> None:
    m = tiny(gateway, max_tokens=7)
    assert m.stop_reason == "max_tokens" and m.stop_sequence is None
    assert m.usage.output_tokens == 7


def test_stop_sequences_report_which_one_matched(gateway: Gateway) -> None:
    full = text_of(tiny(gateway, temperature=0, max_tokens=30))
    stop = full[10:13]
    m = tiny(gateway, temperature=0, max_tokens=30, stop_sequences=["never-ever-q", stop])
    assert m.stop_reason == "stop_sequence"
    assert m.stop_sequence == stop
    assert text_of(m) == full[: full.index(stop)]

    with claude(gateway).messages.stream(
        **sdk(
            model=TINY,
            messages=[{"role": "user", "content": "hello there"}],
            max_tokens=30,
            temperature=0,
            stop_sequences=[stop],
        )
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence, text_of(final)) == ("stop_sequence", stop, text_of(m))


def test_temperature_top_p_top_k_are_honoured(gateway: Gateway) -> None:
    greedy = text_of(tiny(gateway, temperature=0))
    assert text_of(tiny(gateway, temperature=1.0, top_k=1)) == greedy
    assert text_of(tiny(gateway, temperature=1.0, top_p=0.0001)) == greedy
    assert len({text_of(tiny(gateway, temperature=1.0)) for _ in range(4)}) > 1


def test_system_prompt_as_string_or_blocks(gateway: Gateway) -> None:
    client = claude(gateway)
    head, rules = "You are terse.", "# Rules\n\n- answer in **one** word\n- no `code`"
    as_string = {"model": TINY, "system": f"{head}\n{rules}", "messages": [{"role": "user", "content": "hi"}]}
    as_blocks = {
        **as_string,
        "system": [
            {"type": "text", "text": head},
            {"type": "text", "text": rules, "cache_control": {"type": "ephemeral"}},
        ],
    }
    for fields in (as_string, as_blocks):
        m = client.messages.create(max_tokens=3, metadata={"user_id": "user-1"}, **fields)
        assert m.usage.output_tokens == 3
    # Blocks join with a newline, so both spell the same prompt, newlines included.
    counts = [client.messages.count_tokens(**fields).input_tokens for fields in (as_string, as_blocks)]
    bare = client.messages.count_tokens(model=TINY, messages=[{"role": "user", "content": "hi"}]).input_tokens
    assert counts[0] == counts[1] > bare


def test_count_tokens_equals_usage(gateway: Gateway) -> None:
    client = claude(gateway)
    fields: dict[str, Any] = {
        "model": TINY,
        "system": f"run {uuid.uuid4().hex}\n\n## Notes\n- first",
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi! how can I help?"},
            {"role": "user", "content": [{"type": "text", "text": "count"}, {"type": "text", "text": "me"}]},
            {"role": "assistant", "content": "Sure,"},  # a prefill counts too
        ],
    }
    counted = client.messages.count_tokens(**fields).input_tokens
    u = client.messages.create(max_tokens=2, **fields).usage
    assert counted == u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens
    assert u.input_tokens > 0
    # Same request again: the prompt now comes from the cache; the total does not move.
    again = client.messages.create(max_tokens=2, **fields).usage
    assert again.cache_read_input_tokens > 0
    assert counted == again.input_tokens + again.cache_read_input_tokens


def test_headers_bearer_and_beta_endpoint(gateway: Gateway) -> None:
    m = claude(gateway, api_key=None, auth_token=gateway.key).messages.create(
        model=TINY, messages=[{"role": "user", "content": "x"}], max_tokens=2
    )
    assert m.usage.output_tokens == 2
    # Claude Code uses the beta client: `?beta=true` and an anthropic-beta header.
    b = claude(gateway).beta.messages.create(
        model=TINY,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=2,
        betas=["prompt-caching-2024-07-31"],
    )
    assert b.stop_reason == "max_tokens"


def test_client_disconnect_frees_the_slot(gateway: Gateway) -> None:
    with claude(gateway).messages.stream(
        model=TINY, messages=[{"role": "user", "content": "go on forever"}], max_tokens=100_000
    ) as stream:
        for seen, _ in enumerate(stream):
            if seen >= 6:
                break
    deadline = time.monotonic() + 30
    active = None
    while time.monotonic() < deadline:
        active = gateway.health().json()["worker"]["active_requests"]
        if active == 0:
            break
        time.sleep(0.2)
    assert active == 0


# ---- errors in Anthropic's shape ------------------------------------------------------


def assert_error(body: object, type_: str, *words: str) -> None:
    assert isinstance(body, dict) and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == type_
    for word in words:
        assert word in body["error"]["message"]


def test_missing_max_tokens(gateway: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude(gateway).post("/v1/messages", cast_to=object, body={"model": TINY, "messages": FRANCE})
    assert_error(exc.value.body, "invalid_request_error", "max_tokens")


def test_unknown_field_is_refused_by_name(gateway: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        tiny(gateway, extra_body={"frobnicate": 1})
    assert_error(exc.value.body, "invalid_request_error", "frobnicate")


def test_bad_json(gateway: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude(gateway).post(
            "/v1/messages",
            cast_to=object,
            content=b"{not json",
            options={"headers": {"content-type": "application/json"}},
        )
    assert_error(exc.value.body, "invalid_request_error", "JSON")


def test_unknown_model_is_not_found(gateway: Gateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as exc:
        claude(gateway).messages.create(model="no-such-model", messages=FRANCE, max_tokens=5)
    assert_error(exc.value.body, "not_found_error", "no-such-model")
    with pytest.raises(anthropic.NotFoundError):
        claude(gateway).messages.count_tokens(model="no-such-model", messages=FRANCE)


def test_missing_or_wrong_key(gateway: Gateway) -> None:
    r = httpx.post(
        gateway.v1 + "/messages",
        json={"model": TINY, "messages": FRANCE, "max_tokens": 2},
        headers=HEADERS,
        timeout=30,
    )
    assert r.status_code == 401
    assert_error(r.json(), "authentication_error", "x-api-key")
    with pytest.raises(anthropic.AuthenticationError) as exc:
        claude(gateway, api_key="mlxm-wrong").messages.count_tokens(model=TINY, messages=FRANCE)
    assert_error(exc.value.body, "authentication_error")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}, ["tools"]),
        ({"tool_choice": {"type": "any"}}, ["tool_choice"]),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            ["tools.0.type", "server tools"],
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "iVBORw0KGgo=",
                                },
                            }
                        ],
                    }
                ]
            },
            ["messages.0.content.0", "images"],
        ),
    ],
)
def test_unsupported_features_are_refused_not_ignored(
    gateway: Gateway, fields: dict[str, Any], words: list[str]
) -> None:
    kw: dict[str, Any] = {"model": TINY, "messages": FRANCE, "max_tokens": 2, **fields}
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude(gateway).messages.create(**kw)
    assert_error(exc.value.body, "invalid_request_error", *words)
    kw.pop("max_tokens")
    with pytest.raises(anthropic.BadRequestError):
        claude(gateway).messages.count_tokens(**kw)


def test_other_errors_keep_the_shape(gateway: Gateway) -> None:
    auth = {**HEADERS, "x-api-key": gateway.key}
    r = httpx.post(gateway.v1 + "/messages/batches", json={}, headers=auth, timeout=30)
    assert r.status_code == 404
    assert_error(r.json(), "not_found_error")
    huge = b'{"model": "tiny-random", "max_tokens": 2, "messages": [{"role": "user", "content": "'
    r = httpx.post(gateway.v1 + "/messages", content=huge + b"x" * (33 * 1024 * 1024) + b'"}]}', headers=auth)
    assert r.status_code == 413
    assert_error(r.json(), "request_too_large", "too large")
    # The OpenAI surface keeps its own shape.
    r = httpx.post(gateway.v1 + "/chat/completions", content=b"{", headers=auth, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_worker_killed_mid_stream_is_an_error_event(own_gateway: Gateway) -> None:
    import os
    import signal

    gw = own_gateway
    pid = gw.worker_pid()
    with (
        pytest.raises(anthropic.APIStatusError) as exc,
        claude(gw).messages.stream(
            model=TINY, messages=[{"role": "user", "content": "long"}], max_tokens=100_000
        ) as stream,
    ):
        for n, _ in enumerate(stream):
            if n == 5:
                os.kill(pid, signal.SIGKILL)
    assert_error(exc.value.body, "api_error", "worker")

    gw.wait_healthy(timeout=60)
    assert tiny(gw, max_tokens=3).usage.output_tokens == 3
