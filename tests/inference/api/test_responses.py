"""End to end: the Responses API (`/v1/responses`) through the official `openai` SDK.

SmolLM2 answers text; `tiny-tools` (Qwen3-style template) calls tools and thinks; `tiny-random`
(gibberish) shows that `text.format` holds on a model that has never seen the schema.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import Gateway
from tests.gateway_fixtures import Admin, uid
from tests.inference.fakes import PROMPT_TOKENS, FakeUpstream

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

SMOL = "smollm2-135m-instruct"
TINY = "tiny-random"
TOOLS_MODEL = "tiny-tools"
NO_THINKING: Any = {"effort": "none"}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather now",
        "parameters": WEATHER,
        "strict": True,
    },
    {"type": "function", "name": "get_time", "parameters": TIME, "strict": True},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "member", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}


def schema_format(schema: dict[str, Any]) -> Any:
    return {"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}}


# ---- text -------------------------------------------------------------------------------------


def test_text_answer_and_usage(gateway: Gateway) -> None:
    client = gateway.openai()
    r = client.responses.create(model=SMOL, input="What is the capital of France?", max_output_tokens=20,
                                temperature=0)  # fmt: skip
    assert r.object == "response" and r.id.startswith("resp_") and r.model == SMOL
    assert r.status in ("completed", "incomplete")
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert item.content[0].type == "output_text"
    assert "Paris" in r.output_text
    assert r.usage is not None and r.usage.input_tokens > 10 and 0 < r.usage.output_tokens <= 20
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens >= 0
    assert r.temperature == 0 and r.store is False and r.max_output_tokens == 20

    # `instructions` is a system message; a list of items is a conversation.
    with_instructions = client.responses.create(
        model=SMOL, instructions="You answer in one word.", input="Capital of France?", max_output_tokens=4
    )
    items = client.responses.create(
        model=SMOL,
        input=[
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": [{"type": "input_text", "text": "Capital of France?"}]},
        ],
        max_output_tokens=4,
    )
    assert with_instructions.usage and items.usage
    assert with_instructions.usage.input_tokens == items.usage.input_tokens


def test_incomplete_when_max_output_tokens_runs_out(gateway: Gateway) -> None:
    r = gateway.openai().responses.create(model=TINY, input="hello", max_output_tokens=3)
    assert r.status == "incomplete"
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 3


def test_streamed_event_sequence(gateway: Gateway) -> None:
    stream = gateway.openai().responses.create(
        model=SMOL, input="What is the capital of France?", max_output_tokens=20, temperature=0, stream=True
    )
    events = list(stream)
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed" if events[-1].response.status == "completed" else "response.incomplete",
    ]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3 and set(types[4:-4]) == {"response.output_text.delta"}
    text = "".join(e.delta for e in deltas)
    done = next(e for e in events if e.type == "response.output_text.done")
    final = events[-1].response
    assert "Paris" in text and done.text == text == final.output_text
    assert events[0].response.status == "in_progress" and events[0].response.id == final.id
    assert final.usage is not None and final.usage.output_tokens > 0


def test_sdk_stream_helper(gateway: Gateway) -> None:
    with gateway.openai().responses.stream(
        model=SMOL, input="What is the capital of France?", max_output_tokens=60, temperature=0
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()  # needs `response.completed`
    assert "Paris" in text and final.output_text == text and final.status == "completed"


def test_sdk_stream_helper_with_a_function_call(gateway: Gateway) -> None:
    with gateway.openai().responses.stream(
        model=TOOLS_MODEL, input="What's the weather in Paris?", tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, reasoning=NO_THINKING, max_output_tokens=300,
    ) as stream:  # fmt: skip
        args = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    (call,) = final.output
    assert call.type == "function_call" and call.arguments == args and call.name in SCHEMAS
    jsonschema.validate(json.loads(args), SCHEMAS[call.name])


# ---- tools ------------------------------------------------------------------------------------


def test_named_function_call(gateway: Gateway) -> None:
    r = gateway.openai().responses.create(
        model=TOOLS_MODEL, input="What's the weather in Paris?", tools=TOOLS,
        tool_choice={"type": "function", "name": "get_weather"}, reasoning=NO_THINKING, max_output_tokens=200,
    )  # fmt: skip
    assert r.status == "completed"
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert (
        call.call_id.startswith("call_")
        and call.id
        and call.id.startswith("fc_")
        and call.status == "completed"
    )
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert r.tool_choice.type == "function" and [t.name for t in r.tools] == ["get_weather", "get_time"]  # type: ignore[union-attr]


def test_streamed_function_call_arguments(gateway: Gateway) -> None:
    stream = gateway.openai().responses.create(
        model=TOOLS_MODEL, input="What's the weather in Paris?", tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, reasoning=NO_THINKING, max_output_tokens=200, stream=True,
    )  # fmt: skip
    events = list(stream)
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "response.output_text.delta" not in types  # no markup (nor anything else) leaks as text
    added = events[2].item
    assert added.type == "function_call" and added.name in SCHEMAS and added.arguments == ""
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = events[-3]
    assert len(deltas) > 3 and "".join(deltas) == done.arguments and done.item_id == added.id
    jsonschema.validate(json.loads(done.arguments), SCHEMAS[added.name])
    (item,) = events[-1].response.output
    assert item.type == "function_call" and item.arguments == done.arguments and item.call_id == added.call_id


def test_function_call_output_round_trip(gateway: Gateway) -> None:
    client = gateway.openai()
    ask: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = client.responses.create(model=TOOLS_MODEL, input=ask, tools=TOOLS, tool_choice="required",
                                    parallel_tool_calls=False, reasoning=NO_THINKING, max_output_tokens=200)  # fmt: skip
    (call,) = first.output
    assert call.type == "function_call"
    history = [
        *ask,
        *[item.model_dump(exclude_none=True) for item in first.output],
        {
            "type": "function_call_output",
            "call_id": call.call_id,
            "output": '{"temperature": 21, "sky": "clear"}',
        },
    ]
    second = client.responses.create(model=TOOLS_MODEL, input=history, tools=TOOLS, reasoning=NO_THINKING,
                                     max_output_tokens=16)  # fmt: skip
    assert second.usage and first.usage and second.usage.input_tokens > first.usage.input_tokens + 20
    assert "<tool_call>" not in second.output_text and "<tool_response>" not in second.output_text


# ---- reasoning ---------------------------------------------------------------------------------


def test_reasoning_items(gateway: Gateway) -> None:
    client = gateway.openai()
    r = client.responses.create(model=TOOLS_MODEL, input="What's the weather in Paris?", max_output_tokens=10)
    (item,) = r.output
    assert item.type == "reasoning" and item.id.startswith("rs_") and item.status == "incomplete"
    assert item.content and item.content[0].type == "reasoning_text" and "<think>" not in item.content[0].text
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 10

    off = client.responses.create(model=TOOLS_MODEL, input="hi", max_output_tokens=10, reasoning=NO_THINKING)
    assert [i.type for i in off.output] == ["message"] and off.output_text
    assert off.usage is not None and off.usage.output_tokens_details.reasoning_tokens == 0

    events = list(client.responses.create(model=TOOLS_MODEL, input="hi", max_output_tokens=10, stream=True))
    types = [e.type for e in events]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert events[3].part.type == "reasoning_text"
    deltas = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    done = next(e for e in events if e.type == "response.reasoning_text.done")
    assert len(deltas) > 3 and "".join(deltas) == done.text


def test_reasoning_item_sent_back_reaches_the_template(gateway: Gateway) -> None:
    """A reasoning item before a function call becomes that turn's `reasoning_content`, which
    Qwen3's template renders inside the current tool loop."""
    client = gateway.openai()
    call = {"type": "function_call", "call_id": "call_1", "name": "get_time", "arguments": '{"zone": "UTC"}'}
    result = {"type": "function_call_output", "call_id": "call_1", "output": "12:00"}
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [],
                 "content": [{"type": "reasoning_text", "text": "I should check the clock. " * 10}]}  # fmt: skip
    ask = {"role": "user", "content": "What time is it?"}
    plain = client.responses.create(
        model=TOOLS_MODEL, input=[ask, call, result], tools=TOOLS, max_output_tokens=1
    )
    thought = client.responses.create(
        model=TOOLS_MODEL, input=[ask, reasoning, call, result], tools=TOOLS, max_output_tokens=1
    )
    assert plain.usage and thought.usage and thought.usage.input_tokens > plain.usage.input_tokens + 30


# ---- structured output ---------------------------------------------------------------------------


def test_json_schema_validates_streamed_and_not(gateway: Gateway) -> None:
    client = gateway.openai()
    for seed_text in ("Describe a person.", "Another one."):
        r = client.responses.create(model=TINY, input=seed_text, text=schema_format(PERSON), temperature=1.0,
                                    max_output_tokens=300)  # fmt: skip
        assert r.status == "completed" and r.text.format.type == "json_schema"  # type: ignore[union-attr]
        jsonschema.validate(json.loads(r.output_text), PERSON)
    events = list(client.responses.create(model=TINY, input="A person.", text=schema_format(PERSON),
                                          temperature=1.0, max_output_tokens=300, stream=True))  # fmt: skip
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    jsonschema.validate(json.loads(text), PERSON)
    obj = client.responses.create(model=TINY, input="x", text={"format": {"type": "json_object"}},
                                  temperature=1.0, max_output_tokens=1500)  # fmt: skip
    # Any JSON object: a random model may write one longer than the budget (no seed here).
    if obj.status == "completed":
        assert isinstance(json.loads(obj.output_text), dict)
    else:
        assert obj.output_text.startswith("{") and obj.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]


class Pet(BaseModel):
    name: str = Field(max_length=12)
    legs: int = Field(ge=0, le=8)
    kind: Literal["cat", "dog", "bird"]


def test_sdk_parse_with_a_pydantic_model(gateway: Gateway) -> None:
    r = gateway.openai().responses.parse(model=TINY, input="A pet.", text_format=Pet, max_output_tokens=200)
    assert isinstance(r.output_parsed, Pet) and r.output_parsed.kind in ("cat", "dog", "bird")


# ---- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "web_search"),
        (
            {"tools": [TOOLS[0], {"type": "code_interpreter", "container": {"type": "auto"}}]},
            "tools[1].type",
            "code_interpreter",
        ),  # fmt: skip
        ({"previous_response_id": "resp_123"}, "previous_response_id", "does not store"),
        ({"store": True}, "store", "does not store"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": TOOLS}, "tool_choice", "nope"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format", "json_schema"),
        ({"top_logprobs": 3}, "top_logprobs", "not supported"),
        ({"frobnicate": 1}, "frobnicate", "frobnicate"),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}
                ]
            },
            "input[0].content[0].type",
            "images",
        ),  # fmt: skip
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "does not store"),
        (
            {
                "input": [
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"},
                    {"role": "user", "content": "x"},
                ]
            },
            "input[0].arguments",
            "JSON object",
        ),  # fmt: skip
    ],
)
def test_bad_requests_are_400_naming_the_parameter(
    gateway: Gateway, extra: dict[str, Any], param: str, words: str
) -> None:
    body: dict[str, Any] = {"input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as exc:
        gateway.openai().responses.create(model=TOOLS_MODEL, max_output_tokens=2, extra_body=body)
    assert exc.value.status_code == 400
    assert exc.value.body["param"] == param  # type: ignore[index]
    assert words in exc.value.message


def test_unknown_model_and_auth(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        gateway.openai().responses.create(model="nope", input="hi")
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]
    r = httpx.post(gateway.v1 + "/responses", json={"model": SMOL, "input": "hi"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


# ---- routing rules ---------------------------------------------------------------------------------


def test_routing_rules_local_and_cloud_targets(
    routed_gateway: Gateway, admin: Admin, fake_upstream: FakeUpstream
) -> None:
    openai_cred = admin.credential(fake_upstream, "openai_compatible")["name"]
    anthropic_cred = admin.credential(fake_upstream, "anthropic_compatible")["name"]
    alias, cloud, no_api = uid("resp-alias"), uid("resp-cloud"), uid("resp-anth")
    # An Anthropic upstream can't serve the Responses API: skipped, the local profile answers.
    admin.rule(alias, {"credential": anthropic_cred, "model": "claude-x"}, {"profile": TINY})
    admin.rule(cloud, {"credential": openai_cred, "model": "gpt-up"})
    admin.rule(no_api, {"credential": anthropic_cred, "model": "claude-x"})
    client = routed_gateway.openai()
    r = client.responses.create(model=alias, input="hello", max_output_tokens=3)
    assert r.status == "incomplete" and r.model == TINY and r.usage and r.usage.output_tokens == 3

    # An OpenAI-style upstream gets the request as sent (but for `model`), and its answer as is.
    up = client.responses.create(model=cloud, input="hi there", max_output_tokens=7)
    assert up.model == "gpt-up" and up.output_text == "echo: hi there" and up.usage and up.usage.input_tokens
    sent = fake_upstream.calls("gpt-up", "/v1/responses")[-1].body
    assert sent == {"model": "gpt-up", "input": "hi there", "max_output_tokens": 7}
    with client.responses.stream(model=cloud, input="streamed words") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == "echo: streamed words"
    rows = admin.wait_rows(lambda rows: len(rows) >= 2 and all(r["completion_tokens"] for r in rows[:2]),
                           model=cloud)  # fmt: skip
    assert {r["backend"] for r in rows} == {f"cloud:{openai_cred}"} and rows[0][
        "prompt_tokens"
    ] == PROMPT_TOKENS

    with pytest.raises(openai.APIStatusError) as exc:
        client.responses.create(model=no_api, input="hello", max_output_tokens=3)
    assert exc.value.status_code == 503 and "no_responses_api" in exc.value.message
