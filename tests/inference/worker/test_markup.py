"""Reasoning and tool-call parsing on recorded-style output of each model family.

The outputs are written the way these models emit them (markers, spacing, parallel calls);
each is fed in pieces of several sizes, as a stream would deliver it, and must come out as
the same content, reasoning and calls, with no markup left in the content.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference.worker import markup as mk

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["location"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    },
}
TOOLS = [WEATHER, TIME]
THINK = ("<think>", "</think>")


def run(
    parser_name: str | None,
    text: str,
    *,
    think: tuple[str, str] | None = THINK,
    initial: str = "normal",
    chunk: int,
    tools: list[dict[str, Any]] | None = TOOLS,
) -> tuple[str, str, list[dict[str, Any]], int]:
    """Feed `text` in `chunk`-sized pieces; returns content, reasoning, calls and how many
    argument pieces were streamed."""
    markup = mk.Markup(think=think, think_ids=None, tool=mk.tool_format(parser_name) if parser_name else None)
    parser = mk.OutputParser(markup, initial_state=initial, tools=tools)
    deltas = [parser.feed(text[i : i + chunk]) for i in range(0, len(text), chunk)]
    deltas.append(parser.finish())
    content = "".join(d.text for d in deltas)
    reasoning = "".join(d.reasoning for d in deltas)
    calls: dict[int, dict[str, Any]] = {}
    pieces = 0
    for d in deltas:
        for tc in d.tool_calls:
            if tc.id is not None:
                assert tc.index not in calls and tc.id.startswith("call_")
                calls[tc.index] = {"name": tc.name, "arguments": ""}
            if tc.arguments:
                pieces += 1
            calls[tc.index]["arguments"] += tc.arguments
    parsed = [{"name": c["name"], "arguments": json.loads(c["arguments"])} for _, c in sorted(calls.items())]
    return content, reasoning, parsed, pieces


CHUNKS = [1, 3, 7, 1000]
PARIS = {"name": "get_weather", "arguments": {"location": "Paris, France", "days": 3}}
TOKYO_TIME = {"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}


@pytest.mark.parametrize("chunk", CHUNKS)
def test_qwen_hermes_parallel_calls_after_text(chunk: int) -> None:
    out = (
        "I'll look up both for you.\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"location": "Paris, France", "days": 3}}\n'
        "</tool_call>\n<tool_call>\n"
        '{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}\n</tool_call>'
    )
    content, reasoning, calls, pieces = run("json_tools", out, chunk=chunk)
    assert content == "I'll look up both for you."
    assert reasoning == ""
    assert calls == [PARIS, TOKYO_TIME]
    if chunk == 1:
        assert pieces > 10  # arguments streamed as they were generated


@pytest.mark.parametrize("chunk", CHUNKS)
def test_qwen3_thinking_then_call(chunk: int) -> None:
    # Qwen3-2507 thinking models: the generation prompt already opened <think>.
    out = (
        "The user asks about Paris. I should call get_weather with a 3 day forecast.\n</think>\n\n"
        "<tool_call>\n"
        '{"name": "get_weather", "arguments": {"location": "Paris, France", "days": 3}}\n'
        "</tool_call>"
    )
    content, reasoning, calls, _ = run("json_tools", out, initial="reasoning", chunk=chunk)
    assert content == ""
    assert reasoning.startswith("The user asks about Paris.") and "</think>" not in reasoning
    assert calls == [PARIS]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_qwen3_hybrid_thinking_and_answer(chunk: int) -> None:
    out = "<think>\nSimple arithmetic: 2 + 2 = 4.\n</think>\n\nThe answer is **4**."
    content, reasoning, calls, _ = run("json_tools", out, chunk=chunk)
    assert reasoning.strip() == "Simple arithmetic: 2 + 2 = 4."
    assert content == "The answer is **4**."
    assert calls == []


@pytest.mark.parametrize("chunk", CHUNKS)
def test_qwen3_coder_xml_call(chunk: int) -> None:
    out = (
        "Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=location>\nParis, France\n"
        "</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
    )
    content, _, calls, pieces = run("qwen3_coder", out, chunk=chunk)
    assert content == "Let me check."
    assert calls == [PARIS]  # "3" became an integer from the tool's schema
    if chunk == 1:
        assert pieces > 10  # the string value streamed as it was generated


WRITE = {
    "type": "function",
    "function": {
        "name": "write_file",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "content": {"type": "string"},
                "mode": {"type": "integer"},
            },
        },
    },
}


@pytest.mark.parametrize("chunk", CHUNKS)
def test_qwen3_coder_streams_a_multiline_file(chunk: int) -> None:
    body = "def f():\n    return \"</param\" + 'x'\n\n\ttab \\ done\n"
    out = (
        "<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/a.py\n</parameter>\n"
        f"<parameter=content>\n{body}\n</parameter>\n<parameter=mode>\n644\n</parameter>\n"
        "</function>\n</tool_call>"
    )
    _, _, calls, _ = run("qwen3_coder", out, chunk=chunk, tools=[WRITE])
    assert calls == [{"name": "write_file", "arguments": {"path": "src/a.py", "content": body, "mode": 644}}]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_llama3_bare_json_call(chunk: int) -> None:
    out = '{"name": "get_weather", "parameters": {"location": "Paris, France", "days": 3}}'
    content, _, calls, pieces = run("llama3_json", out, think=None, chunk=chunk)
    assert content == ""
    assert calls == [PARIS]
    if chunk == 1:
        assert pieces > 10


@pytest.mark.parametrize("chunk", CHUNKS)
def test_llama3_python_tag_and_plain_answers(chunk: int) -> None:
    out = '<|python_tag|>{"name": "get_time", "parameters": {"timezone": "Asia/Tokyo"}}'
    content, _, calls, _ = run("llama3_json", out, think=None, chunk=chunk)
    assert (content, calls) == ("", [TOKYO_TIME])
    plain = "  The weather in Paris is sunny, around {20} degrees."
    content, _, calls, _ = run("llama3_json", plain, think=None, chunk=chunk)
    assert (content, calls) == (plain, [])


@pytest.mark.parametrize("chunk", CHUNKS)
def test_mistral_json_list(chunk: int) -> None:
    out = (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Paris, France", "days": 3}}, '
        '{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}]'
    )
    content, _, calls, _ = run("mistral", out, think=None, chunk=chunk)
    assert (content, calls) == ("", [PARIS, TOKYO_TIME])


@pytest.mark.parametrize("chunk", CHUNKS)
def test_mistral_args_header_calls(chunk: int) -> None:
    # Mistral Small 3.2 / Magistral (tokenizer v11+): name[ARGS]{json}, repeated.
    out = (
        '[TOOL_CALLS]get_weather[ARGS]{"location": "Paris, France", "days": 3}'
        '[TOOL_CALLS]get_time[ARGS]{"timezone": "Asia/Tokyo"}'
    )
    content, _, calls, pieces = run("mistral", out, think=None, chunk=chunk)
    assert (content, calls) == ("", [PARIS, TOKYO_TIME])
    if chunk == 1:
        assert pieces > 10


@pytest.mark.parametrize("chunk", CHUNKS)
def test_gemma4_call_with_thought_channel(chunk: int) -> None:
    out = (
        "<|channel>thoughtThe user wants the weather.<channel|>"
        '<|tool_call>call:get_weather{location:<|"|>Paris, France<|"|>,days:3}<tool_call|>'
    )
    content, reasoning, calls, pieces = run(
        "gemma4", out, think=("<|channel>thought", "<channel|>"), chunk=chunk
    )
    assert reasoning == "The user wants the weather."
    assert (content, calls) == ("", [PARIS])
    if chunk == 1:
        assert pieces > 10  # the string value streamed as it was generated


NOTE = {
    "type": "function",
    "function": {
        "name": "add_note",
        "parameters": {
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "meta": {"type": "object"},
                "pinned": {"type": "boolean"},
                "id": {"type": "string"},
            },
        },
    },
}


@pytest.mark.parametrize("chunk", CHUNKS)
def test_gemma4_parallel_calls_with_nested_values(chunk: int) -> None:
    out = (
        '<|tool_call>call:add_note{text:<|"|>a, {b}: "c"\nd<|"|>,tags:[<|"|>x,y<|"|>,<|"|>z<|"|>],'
        'meta:{level:2,who:<|"|>me<|"|>},pinned:true}<tool_call|>'
        '<|tool_call>call:get_time{timezone:<|"|>Asia/Tokyo<|"|>}<tool_call|>'
    )
    _, _, calls, pieces = run("gemma4", out, think=None, chunk=chunk, tools=[NOTE, TIME])
    note = {
        "text": 'a, {b}: "c"\nd',
        "tags": ["x,y", "z"],
        "meta": {"level": 2, "who": "me"},
        "pinned": True,
    }
    assert calls == [{"name": "add_note", "arguments": note}, TOKYO_TIME]
    if chunk == 1:
        assert pieces > 20


@pytest.mark.parametrize("chunk", CHUNKS)
def test_function_gemma_call(chunk: int) -> None:
    out = "<start_function_call>call:get_weather{location:<escape>Paris, France<escape>,days:3}<end_function_call>"
    content, _, calls, _ = run("function_gemma", out, think=None, chunk=chunk)
    assert (content, calls) == ("", [PARIS])


@pytest.mark.parametrize("chunk", CHUNKS)
def test_glm_thinking_and_xml_args(chunk: int) -> None:
    out = (
        "<think>The user wants Paris weather for three days.</think>\n"
        "<tool_call>get_weather\n<arg_key>location</arg_key>\n<arg_value>Paris, France</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>"
    )
    content, reasoning, calls, pieces = run("glm47", out, chunk=chunk)
    assert reasoning == "The user wants Paris weather for three days."
    assert (content, calls) == ("", [PARIS])
    if chunk == 1:
        assert pieces > 10  # the string value streamed as it was generated


@pytest.mark.parametrize("chunk", CHUNKS)
def test_glm_parallel_calls_with_multiline_and_typed_values(chunk: int) -> None:
    body = 'line one\n  </arg line two "quoted"\n'
    out = (
        "I'll save it.<tool_call>add_note\n<arg_key>text</arg_key>\n<arg_value>\n"
        f'{body}</arg_value>\n<arg_key>tags</arg_key>\n<arg_value>["a", "b"]</arg_value>\n'
        "<arg_key>pinned</arg_key><arg_value>true</arg_value>\n<arg_key>id</arg_key>"
        "<arg_value>42</arg_value>\n</tool_call><tool_call>get_time\n<arg_key>timezone</arg_key>\n"
        "<arg_value>Asia/Tokyo</arg_value>\n</tool_call>"
    )
    content, _, calls, pieces = run("glm47", out, chunk=chunk, tools=[NOTE, TIME])
    note = {
        "text": body.strip(),
        "tags": ["a", "b"],
        "pinned": True,
        "id": "42",
    }  # "id" is a string by schema
    assert content == "I'll save it."
    assert calls == [{"name": "add_note", "arguments": note}, TOKYO_TIME]
    if chunk == 1:
        assert pieces > 20


@pytest.mark.parametrize("chunk", CHUNKS)
def test_pythonic_parallel_calls(chunk: int) -> None:
    # LFM2 style; nested containers as JSON (true/false/null), as chat templates render them.
    out = (
        "Checking.<|tool_call_start|>[get_weather(location='Paris, France', days=3), "
        'add_note(text="a (b), [c]", tags=["x", "y"], meta={"ok": true, "n": null}, pinned=False), '
        'get_time(timezone="Asia/Tokyo")]<|tool_call_end|>'
    )
    content, _, calls, pieces = run("pythonic", out, think=None, chunk=chunk, tools=[WEATHER, NOTE, TIME])
    note = {"text": "a (b), [c]", "tags": ["x", "y"], "meta": {"ok": True, "n": None}, "pinned": False}
    assert content == "Checking."
    assert calls == [PARIS, {"name": "add_note", "arguments": note}, TOKYO_TIME]
    if chunk == 1:
        assert pieces >= 12  # each argument as soon as its value is complete


@pytest.mark.parametrize("chunk", CHUNKS)
def test_deepseek_r1_reasoning_then_markdown(chunk: int) -> None:
    out = "Okay, let me think.\nFirst, 17 is prime.\n</think>\n\n## Answer\n\n- **17** is prime.\n"
    content, reasoning, _, _ = run(None, out, initial="reasoning", chunk=chunk, tools=None)
    assert reasoning == "Okay, let me think.\nFirst, 17 is prime.\n"
    assert content == "## Answer\n\n- **17** is prime.\n"


def test_without_tools_in_the_request_markup_is_plain_text() -> None:
    out = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    content, _, calls, _ = run("json_tools", out, chunk=5, tools=None)
    assert (content, calls) == (out, [])


def test_a_truncated_call_is_dropped_not_leaked() -> None:
    out = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "Par'
    markup = mk.Markup(think=None, think_ids=None, tool=mk.tool_format("qwen3_coder"))
    parser = mk.OutputParser(markup, initial_state="normal", tools=TOOLS)
    delta = parser.feed(out)
    end = parser.finish()
    assert delta.text + end.text == "Sure."
    assert not delta.tool_calls and not end.tool_calls and not parser.made_calls


def test_unknown_parsers_are_refused() -> None:
    with pytest.raises(mk.MarkupError):
        mk.tool_format("no_such_parser")
    with pytest.raises(mk.MarkupError):
        mk.tool_format("../evil")


def test_injected_tools_and_history_for_templates_without_tools() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": PARIS}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21C"},
        {"role": "tool", "tool_call_id": "c2", "content": "12:00"},
    ]
    out = mk.inject_tools(messages, [WEATHER])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert json.dumps(WEATHER) in out[0]["content"]
    assert (
        out[2]["content"]
        == '<tool_call>\n{"name": "get_weather", "arguments": '
        + json.dumps(PARIS["arguments"])
        + "}\n</tool_call>"
    )
    assert out[3]["content"] == (
        "<tool_response>\nsunny, 21C\n</tool_response>\n<tool_response>\n12:00\n</tool_response>"
    )
    # The injected format parses with the json_tools parser.
    _, _, calls, _ = run("prompt", out[2]["content"], chunk=4)
    assert calls == [PARIS]
