"""Protocol translation, unit level (the live tests in test_upstream drive it through the SDKs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from inference import encoders
from inference import protocol as p
from inference import translate as t
from inference.events import Stream


def _events(chunks: list[bytes]) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    out = []
    for c in b"".join(chunks).decode().strip().split("\n\n"):
        name, data = c.split("\n", 1)
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_messages_to_chat_maps_everything() -> None:
    body = {
        "model": "client-name", "max_tokens": 100, "system": [{"type": "text", "text": "sys"}],
        "temperature": 0.5, "top_k": 5, "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "calling"},
                                              {"type": "tool_use", "id": "tu1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": "42", "is_error": True},
                                         {"type": "text", "text": "thanks"}]},
        ],
        "stream": True,
    }  # fmt: skip
    out = t.messages_to_chat(body, model="up", provider="openai_compatible")
    assert out["model"] == "up" and out["max_tokens"] == 100 and out["top_k"] == 5 and out["stop"] == ["END"]
    assert out["user"] == "u1" and out["stream_options"] == {"include_usage": True}
    assert out["messages"][0] == {"role": "system", "content": "sys"}
    assert out["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AAA"},
    }
    assert out["messages"][2]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "tu1", "content": "Error: 42"}
    assert out["messages"][4] == {"role": "user", "content": "thanks"}
    assert (
        out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
        and out["parallel_tool_calls"] is False
    )
    assert out["tools"][0] == {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object"}, "description": "d"},
    }
    strict = t.messages_to_chat({**body, "top_k": None}, model="up", provider="openai")
    assert "max_completion_tokens" in strict and "max_tokens" not in strict
    with pytest.raises(t.TranslationError, match="top_k"):
        t.messages_to_chat(body, model="up", provider="openai")
    with pytest.raises(t.TranslationError, match="thinking"):
        t.messages_to_chat(
            {**body, "thinking": {"type": "enabled", "budget_tokens": 1000}}, model="up", provider="x"
        )


def test_chat_answer_to_message() -> None:
    resp = {"id": "chatcmpl-abc", "model": "up", "choices": [{"finish_reason": "tool_calls", "message": {
        "content": "hi", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": '{"x": 2}'}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 6}}}  # fmt: skip
    stream = Stream(id=t.message_id(resp["id"]), model="up", first=t.chat_outputs(resp))
    msg = json.loads(asyncio.run(encoders.anthropic_whole(stream)).content)
    assert msg["id"] == "msg_abc" and msg["stop_reason"] == "tool_use"
    assert msg["content"] == [
        {"type": "text", "text": "hi"},
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 2}},
    ]
    assert msg["usage"] == {
        "input_tokens": 4,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 6,
        "output_tokens": 4,
    }


async def _rest(batches: list[list[p.Output]]) -> AsyncGenerator[list[p.Output], None]:
    for batch in batches:
        yield batch


def _stream(id_: str, batches: list[list[p.Output]]) -> Stream:
    return Stream(id=id_, model="m", first=batches[0], rest=_rest(batches[1:]))


async def _bytes(events: AsyncIterator[bytes]) -> list[bytes]:
    return [e async for e in events]


def test_chat_stream_to_message_events() -> None:
    """An OpenAI upstream's chunks, decoded, through the Anthropic encoder local answers use."""
    d = t.ChatChunkDecoder()
    batches = []
    for chunk in (
        {"id": "chatcmpl-1", "choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"content": "Hel"}}]},
        {"choices": [{"delta": {"content": "lo"}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]
                    }
                }
            ]
        },
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}},
    ):
        if outs := d.feed(chunk):
            batches.append(outs)
    batches.append(d.end())
    events = _events(asyncio.run(_bytes(encoders.anthropic_events(_stream(t.message_id(d.id), batches)))))
    names = [n for n, _ in events]
    # Anthropic's own order: the ping follows the first content_block_start.
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]  # fmt: skip
    assert events[0][1]["message"]["id"] == "msg_1"
    assert events[6][1]["content_block"] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
    assert (
        events[8][1]["delta"] == {"type": "input_json_delta", "partial_json": "1}"}
        and events[8][1]["index"] == 1
    )
    assert (
        events[10][1]["delta"]["stop_reason"] == "tool_use" and events[10][1]["usage"]["output_tokens"] == 5
    )
    empty = _events(
        asyncio.run(_bytes(encoders.anthropic_events(_stream("msg_2", [t.ChatChunkDecoder().end()]))))
    )
    assert [n for n, _ in empty] == ["message_start", "content_block_start", "ping", "content_block_stop",
                                     "message_delta", "message_stop"]  # fmt: skip


def test_chat_to_messages_maps_everything() -> None:
    body = {
        "model": "x", "max_completion_tokens": 50, "temperature": 0.3, "stop": "END", "user": "u",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "parallel_tool_calls": False,
        "messages": [
            {"role": "system", "content": "s1"}, {"role": "developer", "content": [{"type": "text", "text": "s2"}]},
            {"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": "https://i/x.png"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "r1"},
            {"role": "user", "content": "more"},
        ],
    }  # fmt: skip
    out = t.chat_to_messages(body, model="claude-x")
    assert out["system"] == "s1\n\ns2" and out["max_tokens"] == 50 and out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u"}
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]
    assert out["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "url", "url": "https://i/x.png"},
    }
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}],
    }
    assert out["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "c1", "content": "r1"},
                                             {"type": "text", "text": "more"}]  # fmt: skip
    assert (
        t.chat_to_messages({"model": "x", "messages": [{"role": "user", "content": "q"}]}, model="c")[
            "max_tokens"
        ]
        == p.DEFAULT_MAX_TOKENS
    )
    for bad in ({"seed": 1}, {"logprobs": True}, {"n": 2}, {"presence_penalty": 0.5}, {"temperature": 1.5},
                {"response_format": {"type": "json_object"}}):  # fmt: skip
        with pytest.raises(t.TranslationError):
            t.chat_to_messages({"model": "x", "messages": [], **bad}, model="c")


def test_message_answer_and_stream_to_chat() -> None:
    """An Anthropic upstream's answer and events, decoded, through the OpenAI chat encoder."""
    msg = {"id": "msg_9", "model": "c", "stop_reason": "max_tokens", "content": [{"type": "text", "text": "a"}],
           "usage": {"input_tokens": 3, "cache_read_input_tokens": 2, "output_tokens": 1}}  # fmt: skip
    whole = Stream(id=t.chat_id(msg["id"]), model="m", first=t.message_outputs(msg))
    chat = json.loads(asyncio.run(encoders.openai_whole(whole, chat=True)).content)
    assert chat["id"] == "chatcmpl-9" and chat["choices"][0]["finish_reason"] == "length"
    assert chat["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 1,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    d = t.MessageEventDecoder()
    batches = []
    for name, data in (
        ("message_start", {"type": "message_start", "message": {"id": "msg_9", "model": "c", "usage": {"input_tokens": 3}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "f"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}}),
        ("message_stop", {"type": "message_stop"}),
    ):  # fmt: skip
        if outs := d.feed(name, data):
            batches.append(outs)
    assert d.end() == []  # message_stop gave the final output
    out = asyncio.run(
        _bytes(encoders.openai_events(_stream(t.chat_id(d.id), batches), chat=True, include_usage=True))
    )
    chunks = [json.loads(c.removeprefix(b"data: ")) for c in out if c != encoders.DONE]
    assert out[-1] == encoders.DONE
    assert (
        chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        and chunks[0]["id"] == "chatcmpl-9"
    )
    assert chunks[1]["choices"][0]["delta"] == {"content": "hi"}
    assert chunks[2]["choices"][0]["delta"]["tool_calls"][0] == {"index": 0, "id": "t1", "type": "function",
                                                                 "function": {"name": "f", "arguments": ""}}  # fmt: skip
    assert chunks[4]["choices"][0]["finish_reason"] == "tool_calls"
    assert (
        chunks[5]["choices"] == []
        and chunks[5]["usage"]["completion_tokens"] == 4
        and chunks[5]["usage"]["prompt_tokens"] == 3
    )
