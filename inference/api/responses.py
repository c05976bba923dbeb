"""OpenAI Responses API: `POST /v1/responses`, on the same worker requests as chat completions.

The answer is encoded by `encoders.ResponsesBuilder` (output items: reasoning, message,
function_call, in generation order; the event sequence when streaming). Errors use OpenAI's
shape. A rule may send it to an OpenAI-style upstream, which is relayed as is.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from ninja import Router

from inference import encoders, gateway, pipeline, upstream
from inference.api.common import call_for, local_prompt
from inference.events import Stream
from inference.responses_schemas import ResponsesRequest

router = Router(tags=["responses"])


def responses_prompt(body: ResponsesRequest) -> gateway.Prompt:
    tool_choice, tool_name = body.tool_choice_values()
    return gateway.Prompt(
        id_prefix="resp_",
        messages=body.chat_messages(),
        template_kwargs=body.reasoning_kwargs(),
        tools=body.tool_dicts(),
        tool_choice=tool_choice,
        tool_name=tool_name,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        sampling={"temperature": body.temperature, "top_p": body.top_p},
        max_tokens=body.max_output_tokens,
        max_tokens_param="max_output_tokens",
        response_format=body.constraint(),
    )


def _echo(body: ResponsesRequest, answer: Stream) -> dict[str, Any]:
    """What the response object repeats of the request (and of the settings it ran with)."""
    req = answer.request
    assert req is not None
    tools = [
        {"type": "function", "name": t["function"]["name"], "description": t["function"].get("description"),
         "parameters": t["function"]["parameters"], "strict": t["function"]["strict"]}
        for t in req.tools or []
    ]  # fmt: skip
    choice: Any = (
        req.tool_choice if req.tool_choice != "function" else {"type": "function", "name": req.tool_name}
    )
    reasoning = body.reasoning
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "parallel_tool_calls": req.parallel_tool_calls,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": reasoning.summary if reasoning else None,
        },
        "temperature": req.sampling.temperature,
        "top_p": req.sampling.top_p,
        "text": body.text_echo(),
        "tool_choice": choice,
        "tools": tools,
        "user": body.user,
        "metadata": body.metadata or {},
    }


@router.post("/responses")
async def create_response(request: HttpRequest, body: ResponsesRequest) -> HttpResponseBase:
    call = call_for(
        request, "responses", body.model, stream=body.stream, prompt=local_prompt(body, responses_prompt)
    )
    answer = await pipeline.serve(call)
    if isinstance(answer, upstream.Relayed):
        return answer.response
    assert isinstance(answer, Stream)
    echo = _echo(body, answer)
    if not body.stream:
        return await encoders.responses_whole(answer, echo)
    return encoders.event_stream(encoders.responses_events(answer, echo))
