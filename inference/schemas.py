"""Request bodies of the OpenAI-compatible API.

Unknown fields are refused (`extra="forbid"`), and fields we parse but cannot honour yet
are refused by `refuse_unsupported` with a 400 that names them: nothing is silently
ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlxmanager.errors import DomainError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class SamplingFields(_Strict):
    """Parameters shared by chat and text completions."""

    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    user: str | None = Field(default=None, max_length=256)
    logprobs: Any = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 16:
            raise ValueError("at most 16 stop sequences")
        if any(len(s) > 200 for s in items):
            raise ValueError("a stop sequence is longer than 200 characters")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > 1024:
            raise ValueError("at most 1024 logit_bias entries")
        for token, bias in v.items():
            if not token.isdigit():
                raise ValueError(f"keys must be token ids, got '{token[:20]}'")
            if not -100 <= bias <= 100:
                raise ValueError(f"bias for token {token} must be between -100 and 100")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def refuse_unsupported(self) -> None:
        if self.n not in (None, 1):
            raise DomainError("n > 1 is not supported yet; send one request per choice", param="n")
        if self.logprobs not in (None, False):
            raise DomainError("logprobs is not supported yet", param="logprobs")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=2048)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.top_logprobs is not None:
            raise DomainError("top_logprobs is not supported yet", param="top_logprobs")
        if self.response_format not in (None, {"type": "text"}):
            raise DomainError("response_format other than text is not supported yet", param="response_format")
        if self.tools:
            raise DomainError("tools are not supported yet", param="tools")
        if self.tool_choice not in (None, "none", "auto"):
            raise DomainError("tool_choice is not supported yet", param="tool_choice")
        for i, m in enumerate(self.messages):
            if m.role == "tool" or m.tool_calls:
                raise DomainError("tool messages are not supported yet", param=f"messages[{i}]")
            if isinstance(m.content, list) and any(p.type == "image_url" for p in m.content):
                raise DomainError("this model does not accept images", param=f"messages[{i}].content")

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as the chat template expects them (plain string content)."""
        out = []
        for m in self.messages:
            if isinstance(m.content, list):
                text = "".join(p.text for p in m.content if isinstance(p, TextPart))
            else:
                text = m.content or ""
            role = "system" if m.role == "developer" else m.role
            out.append({"role": role, "content": text})
        return out


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field()
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise DomainError(
                "batched prompts are not supported yet; send one prompt per request",
                param="prompt",
            )
        if self.echo:
            raise DomainError("echo is not supported yet", param="echo")
        if self.best_of not in (None, 1):
            raise DomainError("best_of is not supported", param="best_of")
        if self.suffix:
            raise DomainError("suffix is not supported", param="suffix")

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
