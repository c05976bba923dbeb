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
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_unsupported_but_known_are_refused_by_name(field: dict, param: str) -> None:
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **field})
    with pytest.raises(DomainError) as exc:
        body.refuse_unsupported()
    assert exc.value.param == param


def test_images_and_tool_messages_are_refused() -> None:
    img = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    with pytest.raises(DomainError, match="images"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": img}).refuse_unsupported()
    tool = [{"role": "tool", "content": "x", "tool_call_id": "1"}]
    with pytest.raises(DomainError, match="tool"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": tool}).refuse_unsupported()


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
    with pytest.raises(DomainError):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "echo": True}).refuse_unsupported()
