"""The Responses request body: input items → chat messages, tools, formats, refusals."""

from __future__ import annotations

from typing import Any

import pytest

from inference.responses_schemas import ResponsesRequest
from mlxmanager.errors import DomainError


def body(**kw: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", "input": "hi", **kw})


def test_string_input_and_instructions() -> None:
    assert body(input="x" * 300_000).chat_messages() == [{"role": "user", "content": "x" * 300_000}]
    assert body(instructions="Be brief.").chat_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_items_become_a_tool_loop() -> None:
    items = [
        {"role": "developer", "content": "rules"},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
        },  # fmt: skip
        {
            "type": "reasoning",
            "id": "rs",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "hmm"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
        },  # fmt: skip
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x": 1}', "id": "fc_1"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
    ]
    assert body(input=items).chat_messages() == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "ab"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "reasoning_content": "hmm",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": {}}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]


def test_tools_default_to_strict_and_tool_choice() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}},
             {"type": "function", "name": "g", "strict": False}]  # fmt: skip
    b = body(tools=tools, tool_choice={"type": "function", "name": "g"})
    assert b.tool_dicts() == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}},
        {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}, "strict": False}},
    ]
    assert b.tool_choice_values() == ("function", "g")
    assert body(tools=tools, tool_choice="required").tool_choice_values() == ("required", None)
    assert body().tool_choice_values() == ("auto", None)


def test_text_format_and_reasoning() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}}
    assert body(text=fmt).constraint() == {"type": "json_schema", "schema": schema}
    assert body(text={"format": {"type": "json_object"}}).constraint() == {"type": "json_object"}
    assert body(text={"format": {"type": "text"}}).constraint() is None
    assert body(reasoning={"effort": "none"}).reasoning_kwargs() == {"enable_thinking": False}
    assert body(reasoning={"effort": "high", "summary": "auto"}).reasoning_kwargs() == {
        "enable_thinking": True,
        "reasoning_effort": "high",
    }


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name"),
        ({"tools": [{"type": "function", "name": "f", "extra": 1}]}, "tools[0].extra"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "allowed_tools", "tools": []}}, "tool_choice"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"max_tool_calls": 2}, "max_tool_calls"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format"),
        ({"input": []}, "input"),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
            "input[0].content[0].type",
        ),
        # Found by the fuzzer: a non-string part type raised TypeError (a 500).
        ({"input": [{"role": "user", "content": [{"type": [], "text": "x"}]}]}, "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": [{"type": {}, "text": "x"}]}]}, "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": "x", "colour": 1}]}, "input[0].colour"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"role": "assistant", "content": "only me"}]}, "input"),
    ],
)
def test_refusals_name_the_parameter(kw: dict[str, Any], param: str) -> None:
    with pytest.raises(DomainError) as exc:
        body(**kw).refuse_unsupported()
    assert exc.value.param == param, exc.value.message


def test_accepted_and_documented_as_ignored() -> None:
    body(
        store=False,
        include=["reasoning.encrypted_content"],
        service_tier="auto",
        prompt_cache_key="k",
        safety_identifier="s",
        metadata={"a": "b"},
        stream_options={"include_obfuscation": False},
        truncation="disabled",
        reasoning={"summary": "auto"},
    ).refuse_unsupported()
