"""Resolve what a client asked for into a worker request: profile, defaults, sampling."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

from inference import protocol as p
from mlxmanager.errors import DomainError, NotFound
from mlxmanager.profiles.models import Profile
from mlxmanager.profiles.selectors import profile_resolve

SAMPLING_KEYS = (
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
            prompt_cache_bytes=pr.prompt_cache_bytes,
        )


def preload_specs_json() -> str:
    """The specs of profiles marked "preload at start", as the worker's --preload argument."""
    specs = [Target(pr).spec for pr in Profile.objects.filter(enabled=True, preload=True)]
    return msgspec.json.encode(specs).decode()


async def resolve(model: str) -> Target:
    """The profile serving `model`: by name, through an alias (the Settings page), or the
    default model for a rule's `local:@default` target."""
    from mlxmanager.sitesettings.selectors import DEFAULT_TARGET, aprofile_name

    name = await aprofile_name(model)
    if name == DEFAULT_TARGET:
        raise NotFound(
            "No default model is set: choose one on the Settings page or mark a profile as default",
            param="model",
        )
    return Target(await profile_resolve(name))


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


def worker_id(prefix: str) -> str:
    """A fresh id for a worker request (the worker's key: never a client's own id)."""
    return f"{prefix}{uuid.uuid4().hex}"


@dataclass(kw_only=True)
class Prompt:
    """The neutral generation request every text surface builds from its schema: what the
    client asked, before any profile is applied (`worker_request` merges the profile)."""

    id_prefix: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "auto"
    tool_name: str | None = None
    parallel_tool_calls: bool = True
    sampling: dict[str, Any] = field(default_factory=dict)  # the client's values (None: not given)
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"
    stop: list[str] = field(default_factory=list)
    response_format: dict[str, Any] | None = None
    thinking_budget: int | None = None
    logprobs: int | None = None
    image_sources: list[Any] = field(default_factory=list)


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
    for key in SAMPLING_KEYS:
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
    values["max_tokens"] = max_tokens or defaults.get("max_tokens") or p.DEFAULT_MAX_TOKENS
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


@dataclass(frozen=True)
class Requester:
    """Who a generation is for, as the worker's fair queue sees it: a user's name, an API
    key's prefix (never its secret), and their turns' weight (MLXM_PRIORITY_WEIGHTS)."""

    user: str = ""
    key: str = ""
    weight: float = 1.0


def requester(key: Any, user: Any) -> Requester:
    """The requester of an API call (`key`, an ApiKey with its user loaded) or of the
    playground (`user`, signed in)."""
    from django.conf import settings

    from mlxmanager.accounts.services import role_of

    owner = key.user if key is not None else user
    if owner is None or not getattr(owner, "is_authenticated", False):
        return Requester(key=key.prefix if key is not None else "")
    weight = settings.MLXM_PRIORITY_WEIGHTS.get(role_of(owner), 1.0)
    return Requester(user=owner.get_username(), key=key.prefix if key is not None else "", weight=weight)


def worker_request(
    prompt: Prompt, target: Target, images: list[bytes], *, request_id: str, who: Requester | None = None
) -> p.Generate:
    """The one place a profile's defaults meet what the client asked."""
    who = who or Requester()
    profile = target.profile
    messages = None if prompt.messages is None else _with_profile_system(list(prompt.messages), profile)
    return p.Generate(
        request_id=request_id,
        model=target.spec,
        sampling=merge_sampling(
            profile,
            prompt.sampling,
            max_tokens=prompt.max_tokens,
            stop=prompt.stop,
            max_tokens_param=prompt.max_tokens_param,
        ),  # fmt: skip
        messages=messages,
        prompt=prompt.prompt,
        chat_template_kwargs={**(profile.chat_template_kwargs or {}), **prompt.template_kwargs},
        tools=prompt.tools,
        tool_choice=prompt.tool_choice,
        tool_name=prompt.tool_name,
        parallel_tool_calls=prompt.parallel_tool_calls,
        response_format=prompt.response_format,
        thinking_budget=prompt.thinking_budget,
        # The profile's overrides of the tool-call and reasoning formats mlx-lm infers.
        tool_parser=profile.tool_parser or "",
        reasoning_parser=profile.reasoning_parser or "",
        logprobs=prompt.logprobs,
        images=images,
        user=who.user,
        key=who.key,
        weight=who.weight,
    )


def count_request(prompt: Prompt, target: Target, images: list[bytes], *, request_id: str) -> p.CountTokens:
    """The prompt `worker_request` would build, to be tokenized only."""
    profile = target.profile
    return p.CountTokens(
        request_id=request_id,
        model=target.spec,
        messages=_with_profile_system(list(prompt.messages or []), profile),
        chat_template_kwargs={**(profile.chat_template_kwargs or {}), **prompt.template_kwargs},
        tools=prompt.tools if prompt.tool_choice != "none" else None,
        tool_parser=profile.tool_parser or "",
        images=images,
    )
