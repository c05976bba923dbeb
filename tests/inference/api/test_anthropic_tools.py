"""End to end through the `anthropic` SDK: tool use, thinking blocks, structured output, and
a Claude-Code-shaped session (markdown system prompt, many tools, streamed tool use,
tool results, follow-up turns)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.conftest import Gateway

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

TINY = "tiny-random"
TOOLS_MODEL = "tiny-tools"
HEADERS = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
NO_THINKING = {"type": "disabled"}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Current weather for a city.", "input_schema": WEATHER},
    {
        "name": "get_time",
        "input_schema": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
]
SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


def claude(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0, timeout=120)


def sse(r: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in r.text.strip().split("\n\n"):
        name, data = chunk.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_forced_tool_use(gateway: Gateway) -> None:
    m = claude(gateway).messages.create(
        model=TOOLS_MODEL,
        max_tokens=200,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        thinking=NO_THINKING,
    )
    assert m.stop_reason == "tool_use"
    (block,) = m.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("toolu_")
    jsonschema.validate(block.input, WEATHER)


def test_streamed_tool_use_event_sequence(gateway: Gateway) -> None:
    body = {
        "model": TOOLS_MODEL,
        "max_tokens": 200,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": NO_THINKING,
        "stream": True,
    }
    r = httpx.post(
        gateway.v1 + "/messages", json=body, headers={**HEADERS, "x-api-key": gateway.key}, timeout=60
    )
    events = sse(r)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[1][1]["content_block"]
    assert start["type"] == "tool_use" and start["input"] == {} and start["name"] in SCHEMAS
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert len(deltas) > 3 and all(d["type"] == "input_json_delta" for d in deltas)
    jsonschema.validate(json.loads("".join(d["partial_json"] for d in deltas)), SCHEMAS[start["name"]])
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    # The SDK's stream helper assembles the same tool_use block.
    with claude(gateway).messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
        final = stream.get_final_message()
    (block,) = final.content
    assert block.type == "tool_use"
    jsonschema.validate(block.input, SCHEMAS[block.name])


def test_thinking_blocks_then_text(gateway: Gateway) -> None:
    client = claude(gateway)
    thinking: Any = {"type": "enabled", "budget_tokens": 6}
    m = client.messages.create(model=TOOLS_MODEL, max_tokens=20, messages=ASK, thinking=thinking)
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking and m.content[1].text  # type: ignore[union-attr]
    assert m.stop_reason == "max_tokens"

    with client.messages.stream(model=TOOLS_MODEL, max_tokens=20, messages=ASK, thinking=thinking) as stream:
        kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert kinds[0] == "thinking_delta" and kinds[-1] == "text_delta"
    assert [b.type for b in final.content] == ["thinking", "text"]


def test_output_config_json_schema_validates_100_of_100(gateway: Gateway) -> None:
    """100 requests at once (so they share batches) on a model that never saw the schema.
    Anthropic's API has no seed: each request asks something different, sampled (temperature 1)."""
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 30},
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
            "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "horror"]}, "maxItems": 3},
        },
        "required": ["title", "year", "genres"],
        "additionalProperties": False,
    }

    async def one(client: anthropic.AsyncAnthropic, i: int) -> Any:
        m = await client.messages.create(
            model=TINY,
            max_tokens=300,
            messages=[{"role": "user", "content": f"A film, please ({i})."}],
            output_config={"format": {"type": "json_schema", "schema": schema}},
        )
        assert m.stop_reason == "end_turn"
        return json.loads(m.content[0].text)  # type: ignore[union-attr]

    async def run() -> list[Any]:
        async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0,
                                            timeout=300) as client:  # fmt: skip
            return await asyncio.gather(*(one(client, i) for i in range(100)))

    answers = asyncio.run(run())
    for answer in answers:
        jsonschema.validate(answer, schema)
    assert len(answers) == 100 and len({json.dumps(a) for a in answers}) > 50


def _agent_system_prompt() -> str:
    """~18k tokens of markdown with newlines, code and lists, like Claude Code's."""
    sections = []
    for i in range(88):
        sections.append(
            f"## Rule {i}: working with files\n\n"
            f"- Read a file before you **edit** it; never guess line {i}.\n"
            f"- Prefer `Grep` over shell `grep -rn 'pattern{i}' src/`.\n\n"
            "```python\n"
            f"def step_{i}(path: str) -> None:\n    print(open(path).read())\n"
            "```\n\n"
            "> Keep answers short; cite paths as `file.py:12`.\n"
        )
    return (
        "You are an interactive CLI tool that helps users with software engineering tasks.\n\n"
        + "\n".join(sections)
    )


def test_claude_code_shaped_session(gateway: Gateway) -> None:
    """An ~18k-token markdown system prompt, 16 tools, streamed tool use, tool results and
    follow-up turns, as Claude Code sends them."""
    system = [{"type": "text", "text": _agent_system_prompt(), "cache_control": {"type": "ephemeral"}}]
    tools: list[Any] = [
        {
            "name": f"Tool{i}",
            "description": f"Tool number {i}.",
            "input_schema": {
                "type": "object",
                "properties": {"path": {"type": "string", "maxLength": 20}},
                "required": ["path"],
                "additionalProperties": False,
            },
        }
        for i in range(16)
    ]
    client = claude(gateway)
    messages: list[Any] = [{"role": "user", "content": [{"type": "text", "text": "List the files."}]}]
    for turn in range(3):
        with client.messages.stream(
            model=TOOLS_MODEL,
            max_tokens=60,
            system=system,
            messages=messages,
            tools=tools,
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            thinking=NO_THINKING,
        ) as stream:
            final = stream.get_final_message()
        (use,) = [b for b in final.content if b.type == "tool_use"]
        assert final.stop_reason == "tool_use" and isinstance(use.input, dict) and "path" in use.input
        messages += [
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": f"file{turn}.py\nREADME.md"},
                    {"type": "text", "text": "Continue."},
                ],
            },
        ]
    count = client.messages.count_tokens(
        model=TOOLS_MODEL, system=system, messages=messages, tools=tools, thinking=NO_THINKING
    )
    assert count.input_tokens > 18_000
    last = client.messages.create(
        model=TOOLS_MODEL, max_tokens=8, system=system, messages=messages, tools=tools, thinking=NO_THINKING
    )
    assert last.usage.input_tokens + (last.usage.cache_read_input_tokens or 0) == count.input_tokens
    assert (last.usage.cache_read_input_tokens or 0) > 0  # the earlier turns came from the prompt cache
