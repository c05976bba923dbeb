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


class StoredMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT)
    reasoning: str | None = Field(default=None, max_length=MAX_TEXT)
    usage: Usage | None = None
    finish_reason: str | None = Field(default=None, max_length=40)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
