import pytest
from pydantic import ValidationError

from inference.schemas import ChatCompletionRequest, CompletionRequest
from mlxmanager.errors import DomainError

MSG = [{"role": "user", "content": "hi"}]


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "bogus": 1})
    assert exc.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    "field",
    [
        {"temperature": 3},
        {"top_p": 0},
        {"max_tokens": 0},
        {"stop": ["x"] * 17},
        {"logit_bias": {"abc": 1}},
        {"logit_bias": {"5": 101}},
        {"presence_penalty": -3},
    ],
)
def test_out_of_range_values(field: dict) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **field})


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ({"n": 3}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),  # needs logprobs: true
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": "x"}}}, "response_format"),
        ({"response_format": {"type": "json_object", "schema": {}}}, "response_format"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_unsupported_but_known_are_refused_by_name(field: dict, param: str) -> None:
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **field})
    with pytest.raises(DomainError) as exc:
        body.refuse_unsupported()
    assert exc.value.param == param


def test_image_parts_keep_their_place_and_malformed_tools_are_invalid() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:,"}}
    img = [{"role": "user", "content": [{"type": "text", "text": "a"}, part, {"type": "text", "text": "b"}]}]
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": img})
    body.refuse_unsupported()
    assert [s.param for s in body.image_sources()] == ["messages[0].content[1].image_url"]
    assert body.template_messages(images=True)[0]["content"] == [
        {"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}
    ]  # fmt: skip
    assert body.template_messages()[0]["content"] == "ab"  # a text model sees the text only
    in_assistant = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [part]}]
    with pytest.raises(DomainError, match="images belong to user messages"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": in_assistant}).refuse_unsupported()
    for tools in ([{"type": "function"}], [{"type": "function", "function": {"name": "has space"}}]):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "tools": tools})


def test_tools_history_and_formats_map_for_the_worker() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                *MSG,
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "hmm",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "tools": [tool],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
            "reasoning_effort": "low",
        }
    )
    body.refuse_unsupported()
    assert body.template_messages()[1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
            ],
            "reasoning_content": "hmm",
        },
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    assert body.tool_dicts() == [tool]
    assert body.tool_choice_values() == ("function", "f")
    assert body.constraint() == {"type": "json_schema", "schema": {"type": "object"}}
    assert body.reasoning_kwargs() == {"enable_thinking": True, "reasoning_effort": "low"}


def test_template_messages_flatten_parts_and_map_developer() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
        }
    )
    assert body.template_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]


def test_completion_prompt_forms() -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["x"]}).prompt_text() == "x"
    with pytest.raises(DomainError):
        CompletionRequest.model_validate({"model": "m", "prompt": ["x", "y"]}).refuse_unsupported()
    CompletionRequest.model_validate({"model": "m", "prompt": "x", "echo": True}).refuse_unsupported()
    with pytest.raises(DomainError):
        CompletionRequest.model_validate(
            {"model": "m", "prompt": "x", "echo": True, "logprobs": 1}
        ).refuse_unsupported()
