"""Typed shapes of a profile: its generation defaults and the options services accept."""

from __future__ import annotations

import copy
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inference.schemas import SamplingFields

_LIMITS = SamplingFields.model_fields


def _same_as_requests(name: str) -> Any:
    # The limits a client request is held to, so a default can never be one a request couldn't send.
    return copy.copy(_LIMITS[name])


class GenerationDefaults(BaseModel):
    """Values applied to every request to the profile that doesn't set them itself."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = _same_as_requests("temperature")
    top_p: float | None = _same_as_requests("top_p")
    top_k: int | None = _same_as_requests("top_k")
    min_p: float | None = _same_as_requests("min_p")
    repetition_penalty: float | None = _same_as_requests("repetition_penalty")
    presence_penalty: float | None = _same_as_requests("presence_penalty")
    frequency_penalty: float | None = _same_as_requests("frequency_penalty")
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    stop: list[str] | None = None
    seed: int | None = _same_as_requests("seed")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            SamplingFields._stop(v)
            return v or None
        return v

    def stored(self) -> dict[str, Any]:
        """What goes into `Profile.defaults`: only the values that were set."""
        return self.model_dump(exclude_none=True)


GENERATION_KEYS: tuple[str, ...] = tuple(GenerationDefaults.model_fields)


def field_limits(name: str) -> dict[str, float]:
    """`{"min": .., "max": ..}` of a default, for the form's number inputs."""
    out: dict[str, float] = {}
    for meta in GenerationDefaults.model_fields[name].metadata:
        for attr, key in (("ge", "min"), ("gt", "min"), ("le", "max"), ("lt", "max")):
            value = getattr(meta, attr, None)
            if value is not None and abs(value) < 2**53:
                out[key] = value
    return out


class ProfileOptions(TypedDict, total=False):
    """Every field of a profile but `name` and `model_path`; all optional."""

    kind: str
    description: str
    defaults: GenerationDefaults | dict[str, Any]
    system_prompt: str
    context_length: int | None
    max_output_tokens: int | None
    chat_template_kwargs: dict[str, Any]
    tool_parser: str
    reasoning_parser: str
    draft_model_path: str
    num_draft_tokens: int
    kv_bits: int | None
    prompt_cache_bytes: int | str | None
    pinned: bool
    preload: bool
    keep_alive_seconds: int | None
    max_concurrent: int
    is_default: bool
    is_test_model: bool
    enabled: bool


class ProfileChanges(ProfileOptions, total=False):
    name: str
    model_path: str
