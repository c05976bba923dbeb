"""What a saved playground message may hold."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_MESSAGES = 1000
MAX_TEXT = 200_000
MAX_IMAGES = 4  # per message
# An attached image is kept as its data: URL (what the model was sent), so a reopened chat
# can go on with it; the playground refuses bigger files before sending.
MAX_IMAGE_CHARS = 7_000_000
IMAGE_URL = r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+$"


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
    images: list[Annotated[str, Field(max_length=MAX_IMAGE_CHARS, pattern=IMAGE_URL)]] | None = Field(
        default=None, max_length=MAX_IMAGES
    )
    # What the playground measured for an answer: time to first token, and decode speed.
    ttft_ms: float | None = Field(default=None, ge=0)
    tokens_per_s: float | None = Field(default=None, ge=0)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ChatSettings(BaseModel):
    """The playground's settings for a chat, restored when it is reopened (the system prompt
    is the transcript's first message)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    thinking: Literal["", "on", "off"] = ""
    tools: str = Field(default="", max_length=MAX_TEXT)  # the Tools box as typed (JSON text)
    tool_choice: Literal["auto", "required", "none"] = "auto"

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_defaults=True)
