"""What a saved playground message may hold."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_MESSAGES = 1000
MAX_TEXT = 200_000


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    prompt_tokens_details: dict[str, int] | None = None


class StoredToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=200)
    name: str = Field(max_length=200)
    arguments: str = Field(default="", max_length=MAX_TEXT)


class StoredMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT)
    reasoning: str | None = Field(default=None, max_length=MAX_TEXT)
    usage: Usage | None = None
    finish_reason: str | None = Field(default=None, max_length=40)
    tool_calls: list[StoredToolCall] | None = Field(default=None, max_length=64)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
