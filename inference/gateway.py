"""Resolve what a client asked for into a worker request: profile, defaults, sampling."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from inference import protocol as p
from inference.anthropic_schemas import CountTokensRequest, MessagesRequest
from inference.responses_schemas import ResponsesRequest
from inference.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from mlxmanager.errors import DomainError
from mlxmanager.profiles.models import Profile
from mlxmanager.profiles.selectors import profile_resolve

DEFAULT_MAX_TOKENS = 512
_SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)


@dataclass(frozen=True)
class Target:
    profile: Profile

    @property
    def spec(self) -> p.ModelSpec:
        pr = self.profile
        return p.ModelSpec(
            name=pr.name,
            path=pr.model_path,
            kind=pr.kind,
            draft_path=pr.draft_model_path or None,
            num_draft_tokens=pr.num_draft_tokens,
            kv_bits=pr.kv_bits,
            pinned=pr.pinned,
            keep_alive_s=float(pr.keep_alive_seconds) if pr.keep_alive_seconds else None,
            max_concurrent=pr.max_concurrent or 32,
            context_length=pr.context_length,
        )


def preload_specs_json() -> str:
    """The specs of profiles marked "preload at start", as the worker's --preload argument."""
    specs = [Target(pr).spec for pr in Profile.objects.filter(enabled=True, preload=True)]
    return msgspec.json.encode(specs).decode()


async def resolve(model: str) -> Target:
    return Target(await profile_resolve(model))


_KIND_WORDS = {
    Profile.KIND_LLM: "a text generation model",
    Profile.KIND_VISION: "a vision model",
    Profile.KIND_EMBEDDINGS: "an embeddings model",
    Profile.KIND_STT: "a speech-to-text model",
    Profile.KIND_TTS: "a text-to-speech model",
}


def require_kind(target: Target, kinds: tuple[str, ...], *, model: str) -> None:
    """A 400 naming the right endpoint when a profile of another kind is asked (an embeddings
    request to a chat profile, a chat to a speech model...)."""
    kind = target.profile.kind
    if kind in kinds:
        return
    wanted = " or ".join(_KIND_WORDS.get(k, k) for k in kinds)
    raise DomainError(
        f"'{model}' is {_KIND_WORDS.get(kind, kind)}, not {wanted}: use {target.profile.endpoint}",
        param="model",
        code="wrong_model_type",
    )


TEXT_KINDS = (Profile.KIND_LLM, Profile.KIND_VISION)


def sampling_for(body: SamplingFields, profile: Profile, *, max_tokens: int | None) -> p.SamplingParams:
    requested = {key: getattr(body, key) for key in _SAMPLING_KEYS}
    if body.logit_bias:
        requested["logit_bias"] = {int(k): float(v) for k, v in body.logit_bias.items()}
    return merge_sampling(profile, requested, max_tokens=max_tokens, stop=body.stop_list())


def merge_sampling(
    profile: Profile,
    requested: dict[str, Any],
    *,
    max_tokens: int | None,
    stop: list[str],
    max_tokens_param: str = "max_tokens",
) -> p.SamplingParams:
    """Request values win; the profile's defaults fill the gaps; then the protocol defaults."""
    defaults: dict[str, Any] = profile.defaults or {}
    values: dict[str, Any] = {}
    for key in _SAMPLING_KEYS:
        value = requested.get(key)
        if value is None:
            value = defaults.get(key)
        if value is not None:
            values[key] = value
    cap = profile.max_output_tokens
    if cap is not None and max_tokens is not None and max_tokens > cap:
        raise DomainError(
            f"{max_tokens_param} is {max_tokens}, but '{profile.name}' answers with at most {cap} tokens",
            param=max_tokens_param,
        )
    values["max_tokens"] = max_tokens or defaults.get("max_tokens") or DEFAULT_MAX_TOKENS
    if cap is not None:
        values["max_tokens"] = min(values["max_tokens"], cap)
    stop = stop or list(defaults.get("stop") or [])
    if stop:
        values["stop"] = stop
    if requested.get("logit_bias"):
        values["logit_bias"] = requested["logit_bias"]
    return p.SamplingParams(**values)


def _with_profile_system(messages: list[dict[str, Any]], profile: Profile) -> list[dict[str, Any]]:
    system_prompt = profile.system_prompt
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def chat_request(
    body: ChatCompletionRequest, target: Target, images: list[bytes] | None = None
) -> p.Generate:
    messages = _with_profile_system(body.template_messages(images=bool(images)), target.profile)
    tool_choice, tool_name = body.tool_choice_values()
    return p.Generate(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        model=target.spec,
        sampling=sampling_for(body, target.profile, max_tokens=body.max_completion_tokens or body.max_tokens),
        messages=messages,
        chat_template_kwargs={
            **(target.profile.chat_template_kwargs or {}),
            **body.reasoning_kwargs(),
            **(body.chat_template_kwargs or {}),
        },
        tools=body.tool_dicts(),
        tool_choice=tool_choice,
        tool_name=tool_name,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        response_format=body.constraint(),
        # The profile's overrides of the tool-call and reasoning formats mlx-lm infers.
        tool_parser=target.profile.tool_parser or "",
        reasoning_parser=target.profile.reasoning_parser or "",
        logprobs=body.logprobs_count(),
        images=images or [],
    )


def completion_request(body: CompletionRequest, target: Target) -> p.Generate:
    return p.Generate(
        request_id=f"cmpl-{uuid.uuid4().hex}",
        model=target.spec,
        sampling=sampling_for(body, target.profile, max_tokens=body.max_tokens),
        prompt=body.prompt_text(),
        logprobs=body.logprobs,
    )


def messages_request(body: MessagesRequest, target: Target, images: list[bytes] | None = None) -> p.Generate:
    """An Anthropic Messages request as a chat generation."""
    messages, template_kwargs = body.chat_prompt(images=bool(images))
    tool_choice, tool_name, parallel = body.tool_choice_values()
    return p.Generate(
        request_id=f"msg_{uuid.uuid4().hex}",
        model=target.spec,
        sampling=merge_sampling(
            target.profile, body.sampling_values(), max_tokens=body.max_tokens, stop=body.stop_list()
        ),
        messages=_with_profile_system(messages, target.profile),
        chat_template_kwargs={**(target.profile.chat_template_kwargs or {}), **template_kwargs},
        tools=body.tool_dicts(),
        tool_choice=tool_choice,
        tool_name=tool_name,
        parallel_tool_calls=parallel,
        response_format=body.constraint(),
        thinking_budget=body.thinking_budget(),
        # The profile's overrides of the tool-call and reasoning formats mlx-lm infers.
        tool_parser=target.profile.tool_parser or "",
        reasoning_parser=target.profile.reasoning_parser or "",
        images=images or [],
    )


def responses_request(body: ResponsesRequest, target: Target) -> p.Generate:
    """An OpenAI Responses request as a chat generation."""
    tool_choice, tool_name = body.tool_choice_values()
    requested = {"temperature": body.temperature, "top_p": body.top_p}
    return p.Generate(
        request_id=f"resp_{uuid.uuid4().hex}",
        model=target.spec,
        sampling=merge_sampling(
            target.profile,
            requested,
            max_tokens=body.max_output_tokens,
            stop=[],
            max_tokens_param="max_output_tokens",
        ),
        messages=_with_profile_system(body.chat_messages(), target.profile),
        chat_template_kwargs={**(target.profile.chat_template_kwargs or {}), **body.reasoning_kwargs()},
        tools=body.tool_dicts(),
        tool_choice=tool_choice,
        tool_name=tool_name,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        response_format=body.constraint(),
        # The profile's overrides of the tool-call and reasoning formats mlx-lm infers.
        tool_parser=target.profile.tool_parser or "",
        reasoning_parser=target.profile.reasoning_parser or "",
    )


def count_tokens_request(
    body: CountTokensRequest, target: Target, images: list[bytes] | None = None
) -> p.CountTokens:
    """The prompt `messages_request` would build for the same body, to be tokenized only."""
    messages, template_kwargs = body.chat_prompt(images=bool(images))
    tool_choice, _, _ = body.tool_choice_values()
    return p.CountTokens(
        request_id=f"count_{uuid.uuid4().hex}",
        model=target.spec,
        messages=_with_profile_system(messages, target.profile),
        chat_template_kwargs={**(target.profile.chat_template_kwargs or {}), **template_kwargs},
        tools=body.tool_dicts() if tool_choice != "none" else None,
        tool_parser=target.profile.tool_parser or "",
        images=images or [],
    )
