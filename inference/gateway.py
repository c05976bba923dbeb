"""Resolve what a client asked for into a worker request: profile, defaults, sampling."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from inference import protocol as p
from inference.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
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
        )


async def resolve(model: str) -> Target:
    return Target(await profile_resolve(model))


def sampling_for(body: SamplingFields, profile: Profile, *, max_tokens: int | None) -> p.SamplingParams:
    """Request values win; the profile's defaults fill the gaps; then the protocol defaults."""
    defaults: dict[str, Any] = profile.defaults or {}
    values: dict[str, Any] = {}
    for key in _SAMPLING_KEYS:
        value = getattr(body, key)
        if value is None:
            value = defaults.get(key)
        if value is not None:
            values[key] = value
    values["max_tokens"] = max_tokens or defaults.get("max_tokens") or DEFAULT_MAX_TOKENS
    stop = body.stop_list() or list(defaults.get("stop") or [])
    if stop:
        values["stop"] = stop
    if body.logit_bias:
        values["logit_bias"] = {int(k): float(v) for k, v in body.logit_bias.items()}
    return p.SamplingParams(**values)


def chat_request(body: ChatCompletionRequest, target: Target) -> p.Generate:
    messages = body.template_messages()
    system_prompt = (target.profile.defaults or {}).get("system_prompt")
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return p.Generate(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        model=target.spec,
        sampling=sampling_for(body, target.profile, max_tokens=body.max_completion_tokens or body.max_tokens),
        messages=messages,
        chat_template_kwargs=body.chat_template_kwargs or {},
    )


def completion_request(body: CompletionRequest, target: Target) -> p.Generate:
    return p.Generate(
        request_id=f"cmpl-{uuid.uuid4().hex}",
        model=target.spec,
        sampling=sampling_for(body, target.profile, max_tokens=body.max_tokens),
        prompt=body.prompt_text(),
    )
