"""OpenAI-compatible endpoints under /v1: models, chat completions, completions, embeddings.

Each route parses its schema into a pipeline call, serves it and encodes the answer
(`inference.encoders`); errors are mapped in `inference.api.v1`.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from ninja import Router

from inference import encoders, gateway, pipeline, upstream
from inference import protocol as p
from inference.api.common import call_for, local_prompt
from inference.events import Stream
from inference.fleet import get_engine_client
from inference.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from mlxmanager.errors import DomainError, NotFound
from mlxmanager.profiles.models import Profile
from mlxmanager.profiles.selectors import profile_list_served

router = Router(tags=["openai"])


def _requested(body: Any) -> dict[str, Any]:
    requested = {key: getattr(body, key) for key in gateway.SAMPLING_KEYS}
    if body.logit_bias:
        requested["logit_bias"] = {int(k): float(v) for k, v in body.logit_bias.items()}
    return requested


def chat_prompt(body: ChatCompletionRequest) -> gateway.Prompt:
    sources = body.image_sources()
    tool_choice, tool_name = body.tool_choice_values()
    return gateway.Prompt(
        id_prefix="chatcmpl-",
        messages=body.template_messages(images=bool(sources)),
        template_kwargs={**body.reasoning_kwargs(), **(body.chat_template_kwargs or {})},
        tools=body.tool_dicts(),
        tool_choice=tool_choice,
        tool_name=tool_name,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        sampling=_requested(body),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop=body.stop_list(),
        response_format=body.constraint(),
        logprobs=body.logprobs_count(),
        image_sources=sources,
    )


def completion_prompt(body: CompletionRequest) -> gateway.Prompt:
    return gateway.Prompt(
        id_prefix="cmpl-",
        prompt=body.prompt_text(),
        sampling=_requested(body),
        max_tokens=body.max_tokens,
        stop=body.stop_list(),
        logprobs=body.logprobs,
    )


async def encode(
    answer: Any,
    *,
    stream: bool,
    chat: bool,
    include_usage: bool,
    logprobs: bool,
    echo: str = "",
    request_id: str,
) -> HttpResponseBase:
    if isinstance(answer, upstream.Relayed):
        return answer.response
    assert isinstance(answer, Stream)
    if not stream:
        return await encoders.openai_whole(answer, chat=chat, logprobs=logprobs, echo=echo)
    events = encoders.openai_events(answer, chat=chat, include_usage=include_usage, logprobs=logprobs, echo=echo,
                                    request_id=request_id)  # fmt: skip
    return encoders.event_stream(events)


def _model(pr: Profile) -> dict[str, Any]:
    return {
        "id": pr.name,
        "object": "model",
        "created": int(pr.created_at.timestamp()),
        "owned_by": "mlx-manager",
    }


async def _visible(request: HttpRequest) -> list[Profile]:
    """The served profiles the request's API key may use (a key limited to some models sees
    only those)."""
    key = getattr(request, "api_key", None)
    return [pr for pr in await profile_list_served() if key is None or key.allows(pr.name)]


@router.get("/models")
async def list_models(request: HttpRequest) -> HttpResponse:
    data = [_model(pr) for pr in await _visible(request)]
    return encoders.json_response({"object": "list", "data": data})


@router.get("/models/{path:model_id}")
async def retrieve_model(request: HttpRequest, model_id: str) -> HttpResponse:
    """One model of `GET /v1/models` (the SDK's `models.retrieve`); a model the key may not use
    is as unknown as one that doesn't exist."""
    for pr in await _visible(request):
        if pr.name == model_id:
            return encoders.json_response(_model(pr))
    raise NotFound(f"The model '{model_id}' does not exist", param="model", code="model_not_found")


@router.post("/chat/completions")
async def chat_completions(request: HttpRequest, body: ChatCompletionRequest) -> HttpResponseBase:
    call = call_for(request, "chat", body.model, stream=body.stream, prompt=local_prompt(body, chat_prompt))
    answer = await pipeline.serve(call)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await encode(answer, stream=body.stream, chat=True, include_usage=include_usage,
                        logprobs=body.logprobs_count() is not None, request_id=call.request_id)  # fmt: skip


@router.post("/completions")
async def completions(request: HttpRequest, body: CompletionRequest) -> HttpResponseBase:
    call = call_for(request, "completions", body.model, stream=body.stream,
                    prompt=local_prompt(body, completion_prompt))  # fmt: skip
    answer = await pipeline.serve(call)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await encode(answer, stream=body.stream, chat=False, include_usage=include_usage,
                        logprobs=body.logprobs is not None, echo=body.prompt_text() if body.echo else "",
                        request_id=call.request_id)  # fmt: skip


@router.post("/embeddings")
async def embeddings(request: HttpRequest, body: EmbeddingRequest) -> HttpResponseBase:
    """Vectors from an embeddings profile (local only: routing rules don't apply here)."""

    async def embed(call: pipeline.Call, target: gateway.Target) -> p.EmbeddingsReply:
        gateway.require_kind(target, (Profile.KIND_EMBEDDINGS,), model=body.model)
        texts, token_ids = body.inputs()
        reply = await get_engine_client().embed(
            p.Embed(request_id=gateway.worker_id("emb-"), model=target.spec, texts=texts, token_ids=token_ids)
        )
        if body.dimensions is not None and body.dimensions != reply.dims:
            raise DomainError(
                f"'{body.model}' makes {reply.dims}-dimensional embeddings and cannot shorten them: "
                f"leave out 'dimensions' or set it to {reply.dims}",
                param="dimensions",
            )
        if call.audit is not None:
            call.audit.tokens(completion=0, prompt=reply.prompt_tokens)
        return reply

    reply = await pipeline.serve(call_for(request, "embeddings", body.model), local=embed)
    vectors = np.frombuffer(reply.data, dtype="<f4").reshape(reply.count, reply.dims)
    if body.encoding_format == "base64":
        encoded: list[Any] = [base64.b64encode(row.tobytes()).decode() for row in vectors]
    else:
        encoded = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
    return encoders.json_response({"object": "list", "data": data, "model": body.model, "usage": usage})
