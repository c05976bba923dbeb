"""Anthropic request bodies → worker requests, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import RequestFactory
from pydantic import ValidationError

from inference import encoders, gateway
from inference import protocol as p
from inference.anthropic_schemas import CountTokensRequest, MessagesRequest
from inference.api.anthropic import messages_prompt
from inference.api.common import shape_of
from inference.events import Failure
from mlxmanager.errors import DomainError
from mlxmanager.profiles.models import Profile

HI = [{"role": "user", "content": "hi"}]


def body(**kw: Any) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "p", "max_tokens": 16, "messages": HI, **kw})


def target(
    *, system_prompt: str = "", chat_template_kwargs: dict | None = None, **defaults: Any
) -> gateway.Target:
    profile = Profile(
        name="p",
        model_path="/m",
        defaults=defaults,
        system_prompt=system_prompt,
        chat_template_kwargs=chat_template_kwargs or {},
    )
    return gateway.Target(profile)


def messages_request(b: MessagesRequest, t: gateway.Target) -> p.Generate:
    """The worker request the pipeline builds for a Messages body."""
    return gateway.worker_request(messages_prompt(b), t, [], request_id=gateway.worker_id("msg_"))


def count_tokens_request(b: CountTokensRequest, t: gateway.Target) -> p.CountTokens:
    return gateway.count_request(messages_prompt(b), t, [], request_id="count")


def generate(**kw: Any) -> p.Generate:
    b = body(**kw)
    b.refuse_unsupported()
    return messages_request(b, target())


def refused(**kw: Any) -> DomainError:
    with pytest.raises(DomainError) as exc:
        body(**kw).refuse_unsupported()
    return exc.value


# ---- prompt shape ---------------------------------------------------------------------


def test_plain_request_maps_to_a_chat_generation() -> None:
    req = generate()
    assert req.request_id.startswith("msg_")
    assert req.messages == [{"role": "user", "content": "hi"}]
    assert req.chat_template_kwargs == {}
    assert req.model == p.ModelSpec(name="p", path="/m")
    assert req.sampling.max_tokens == 16


def test_system_string_keeps_newlines_and_markdown() -> None:
    system = "You are terse.\n\n# Rules\n- **never** guess\n```py\nx = 1\n```\n"
    req = generate(system=system)
    assert req.messages is not None
    assert req.messages[0] == {"role": "system", "content": system}


def test_system_blocks_are_joined_by_newlines() -> None:
    blocks = [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "# Env\n- cwd: /tmp", "cache_control": {"type": "ephemeral"}},
    ]
    req = generate(system=blocks)
    assert req.messages is not None
    assert req.messages[0]["content"] == "You are Claude Code.\n# Env\n- cwd: /tmp"


def test_content_blocks_and_consecutive_turns_are_combined() -> None:
    req = generate(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
            {"role": "user", "content": "e"},
        ]
    )
    assert req.messages == [
        {"role": "user", "content": "a\nb\n\nc"},
        {"role": "assistant", "content": "d"},
        {"role": "user", "content": "e"},
    ]


def test_final_assistant_turn_is_a_prefill() -> None:
    prefill = [*HI, {"role": "assistant", "content": "The answer is"}]
    req = generate(messages=prefill)
    assert req.messages is not None and req.messages[-1] == {"role": "assistant", "content": "The answer is"}
    assert req.chat_template_kwargs == {"add_generation_prompt": False, "continue_final_message": True}

    empty = generate(messages=[*HI, {"role": "assistant", "content": ""}])
    assert empty.messages == HI and empty.chat_template_kwargs == {}


def test_profile_system_prompt_applies_unless_the_client_sent_one() -> None:
    t = target(system_prompt="Be kind.")
    req = messages_request(body(), t)
    assert req.messages is not None and req.messages[0] == {"role": "system", "content": "Be kind."}
    req = messages_request(body(system="mine"), t)
    assert req.messages is not None and req.messages[0]["content"] == "mine"


def test_profile_template_kwargs_apply_and_a_prefill_overrides_them() -> None:
    t = target(chat_template_kwargs={"enable_thinking": False, "add_generation_prompt": True})
    assert messages_request(body(), t).chat_template_kwargs == {
        "enable_thinking": False,
        "add_generation_prompt": True,
    }
    prefill = body(messages=[*HI, {"role": "assistant", "content": "Well,"}])
    assert messages_request(prefill, t).chat_template_kwargs == {
        "enable_thinking": False,
        "add_generation_prompt": False,
        "continue_final_message": True,
    }


def test_count_tokens_builds_the_same_prompt_as_messages() -> None:
    fields = {
        "model": "p",
        "system": [{"type": "text", "text": "S\nT"}],
        "messages": [*HI, {"role": "assistant", "content": "Sure,"}],
    }
    t = target(system_prompt="ignored: the client sent one", chat_template_kwargs={"enable_thinking": False})
    gen = messages_request(MessagesRequest.model_validate({**fields, "max_tokens": 5}), t)
    count = count_tokens_request(CountTokensRequest.model_validate(fields), t)
    assert isinstance(count, p.CountTokens)
    assert (count.model, count.messages, count.chat_template_kwargs) == (
        gen.model,
        gen.messages,
        gen.chat_template_kwargs,
    )


# ---- sampling -------------------------------------------------------------------------


def test_sampling_fields_and_profile_defaults_merge() -> None:
    b = body(temperature=0.3, top_k=7, stop_sequences=["END", ""])
    s = messages_request(b, target(top_p=0.9, temperature=0.8, max_tokens=999, min_p=0.1)).sampling
    assert (s.temperature, s.top_k, s.top_p, s.min_p) == (0.3, 7, 0.9, 0.1)
    assert s.max_tokens == 16  # required by Anthropic: the request always wins
    assert s.stop == ["END"]
    assert messages_request(body(), target(stop=["x"])).sampling.stop == ["x"]


def test_metadata_cache_control_and_disabled_thinking_are_accepted() -> None:
    generate(
        metadata={"user_id": "u-1"},
        thinking={"type": "disabled"},
        cache_control={"type": "ephemeral", "ttl": "5m"},
        tool_choice={"type": "auto"},
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
            }
        ],
    )


# ---- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"stop_sequences": ["x"] * 17}, "stop_sequences"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"metadata": {"user_id": "u", "plan": "pro"}}, "metadata.plan"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"n": 2}, "n"),
    ],
)
def test_invalid_fields_are_refused_by_name(fields: dict[str, Any], loc: str) -> None:
    data = {"model": "p", "max_tokens": 16, "messages": HI, **fields}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValidationError) as exc:
        MessagesRequest.model_validate(data)
    assert ".".join(str(x) for x in exc.value.errors()[0]["loc"]) == loc


def test_count_tokens_refuses_generation_fields() -> None:
    with pytest.raises(ValidationError) as exc:
        CountTokensRequest.model_validate({"model": "p", "messages": HI, "max_tokens": 5})
    assert exc.value.errors()[0]["type"] == "extra_forbidden"


def test_image_blocks_keep_their_place_and_merge_with_their_turn() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    body = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "user", "content": [{"type": "text", "text": "what?"}, image]},
            ],
        }
    )
    body.refuse_unsupported()
    [source] = body.image_sources()
    assert (
        source.param == "messages.1.content.1" and source.data == "AAAA" and source.media_type == "image/png"
    )
    messages, _ = body.chat_prompt(images=True)
    assert messages == [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "\n\n"},
                                     {"type": "text", "text": "what?"}, {"type": "image"}]}
    ]  # fmt: skip
    assert body.chat_prompt()[0] == [{"role": "user", "content": "first\n\nwhat?"}]
    err = refused(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": [image]}])
    assert err.message == "image blocks belong to user messages"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
        ({"tools": [{"name": "bad name", "input_schema": {}}]}, "tools.0.name"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tool_choice": {"type": "tool", "name": "f"}}, "tool_choice.name"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 16}}, "max_tokens"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
                ]
            },
            "messages.0.content.0",
        ),
        (
            {
                "messages": [
                    *HI,
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "1"}],
                    },
                ]
            },
            "messages.1.content.0",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "messages.0.content.0"),
        ({"messages": [{"role": "user", "content": ""}, *HI]}, "messages.0"),
    ],
)
def test_unsupported_features_are_refused_by_name(fields: dict[str, Any], param: str) -> None:
    assert refused(**fields).param == param


# ---- Anthropic's error shape --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "want_status", "type_"),
    [
        (400, None, 400, "invalid_request_error"),
        (401, None, 401, "authentication_error"),
        (404, None, 404, "not_found_error"),
        (413, None, 413, "request_too_large"),
        (500, None, 500, "api_error"),
        (503, "worker_unavailable", 503, "api_error"),
        (503, p.ERR_OVERLOADED, 529, "overloaded_error"),
    ],
)
def test_error_shape(status: int, code: str | None, want_status: int, type_: str) -> None:
    r = encoders.error_response(
        encoders.ANTHROPIC, Failure(status, "boom", code, "server_error", "max_tokens")
    )
    assert r.status_code == want_status
    assert json.loads(r.content) == {"type": "error", "error": {"type": type_, "message": "max_tokens: boom"}}


def test_only_messages_paths_get_anthropic_errors() -> None:
    rf = RequestFactory()
    assert shape_of(rf.post("/v1/messages")) == encoders.ANTHROPIC
    assert shape_of(rf.post("/v1/messages/count_tokens?beta=true")) == encoders.ANTHROPIC
    assert shape_of(rf.post("/v1/chat/completions")) == encoders.OPENAI
    assert shape_of(rf.post("/v1/messagesx")) == encoders.OPENAI


# ---- tools, tool results, thinking, structured output --------------------------------------

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather now",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    "cache_control": {"type": "ephemeral"},
}


def test_tools_and_tool_choice_map_to_the_worker_request() -> None:
    req = generate(tools=[{**WEATHER_TOOL, "strict": True}], tool_choice={"type": "any"})
    assert req.tools == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "Weather now",
                "strict": True,
            },
        }
    ]
    assert (req.tool_choice, req.tool_name, req.parallel_tool_calls) == ("required", None, True)
    named = generate(
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    assert (named.tool_choice, named.tool_name, named.parallel_tool_calls) == (
        "function",
        "get_weather",
        False,
    )
    assert generate(tools=[WEATHER_TOOL], tool_choice={"type": "none"}).tool_choice == "none"


def test_tool_use_and_tool_result_blocks_become_template_messages() -> None:
    req = generate(
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Need the tool.", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "21C"}],
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": True},
                    {"type": "text", "text": "And now?"},
                ],
            },
        ],
    )
    assert req.messages == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
            "reasoning_content": "Need the tool.",
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "21C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
        {"role": "user", "content": "And now?"},
    ]
    assert req.chat_template_kwargs == {}


def test_thinking_and_output_config_map_to_template_kwargs_budget_and_constraint() -> None:
    req = generate(max_tokens=64, thinking={"type": "enabled", "budget_tokens": 32})
    assert req.chat_template_kwargs == {"enable_thinking": True} and req.thinking_budget == 32
    off = generate(thinking={"type": "disabled"})
    assert off.chat_template_kwargs == {"enable_thinking": False} and off.thinking_budget is None
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = generate(output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "low"})
    assert out.response_format == {"type": "json_schema", "schema": schema}
    assert out.chat_template_kwargs == {"reasoning_effort": "low"}


@pytest.mark.parametrize("kind", [[], {}, 3, None])
def test_a_block_whose_type_is_not_a_string_is_a_validation_error(kind: Any) -> None:
    """Found by the fuzzer: `"type": []` raised TypeError (a 500) instead of a 400."""
    messages = [{"role": "user", "content": [{"type": kind, "text": "hi"}]}]
    with pytest.raises(ValidationError):
        MessagesRequest.model_validate({"model": "p", "max_tokens": 16, "messages": messages})
