"""Anthropic-compatible endpoints under /v1: `POST /v1/messages` and `/v1/messages/count_tokens`.

The routes hang off the `/v1` NinjaAPI (same auth: `x-api-key` or Bearer); errors on these
paths come in Anthropic's shape (`inference.api.common.shape_of`). `anthropic-version` and
`anthropic-beta` headers are accepted and not needed: there is one version of this surface
(they are passed on to an Anthropic upstream).
"""

from __future__ import annotations

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from ninja import Router

from inference import encoders, gateway, pipeline, upstream
from inference.anthropic_schemas import CountTokensRequest, MessagesRequest
from inference.api.common import call_for, local_prompt
from inference.events import Stream

router = Router(tags=["anthropic"])


def messages_prompt(body: CountTokensRequest) -> gateway.Prompt:
    """A Messages (or count_tokens) request as a chat generation."""
    sources = body.image_sources()
    messages, template_kwargs = body.chat_prompt(images=bool(sources))
    tool_choice, tool_name, parallel = body.tool_choice_values()
    prompt = gateway.Prompt(
        id_prefix="msg_",
        messages=messages,
        template_kwargs=template_kwargs,
        tools=body.tool_dicts(),
        tool_choice=tool_choice,
        tool_name=tool_name,
        parallel_tool_calls=parallel,
        response_format=body.constraint(),
        thinking_budget=body.thinking_budget(),
        image_sources=sources,
    )
    if isinstance(body, MessagesRequest):
        prompt.sampling = body.sampling_values()
        prompt.max_tokens = body.max_tokens
        prompt.stop = body.stop_list()
    return prompt


@router.post("/messages")
async def messages(request: HttpRequest, body: MessagesRequest) -> HttpResponseBase:
    call = call_for(
        request, "messages", body.model, stream=body.stream, prompt=local_prompt(body, messages_prompt)
    )
    answer = await pipeline.serve(call)
    if isinstance(answer, upstream.Relayed):
        return answer.response
    assert isinstance(answer, Stream)
    if not body.stream:
        return await encoders.anthropic_whole(answer)
    return encoders.event_stream(encoders.anthropic_events(answer, request_id=call.request_id))


@router.post("/messages/count_tokens")
async def count_tokens(request: HttpRequest, body: CountTokensRequest) -> HttpResponseBase:
    call = call_for(request, "count_tokens", body.model, prompt=local_prompt(body, messages_prompt))
    answer = await pipeline.serve(call)
    if isinstance(answer, upstream.Relayed):
        return answer.response
    assert isinstance(answer, pipeline.Count)
    return encoders.json_response({"input_tokens": answer.input_tokens})
