"""Request bodies of the Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`).

Same rules as the OpenAI bodies: unknown fields are refused (`extra="forbid"`), and what we
parse but cannot honour yet is refused by `refuse_unsupported` with a 400 that names it.
Params in errors use Anthropic's dotted paths (`messages.0.content.1`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from mlxmanager.errors import DomainError

# Between text blocks of one message or of `system`, and between consecutive turns of the
# same role, which Anthropic combines into one turn.
BLOCK_SEPARATOR = "\n"
TURN_SEPARATOR = "\n\n"

# Content block types Anthropic defines that we parse but cannot serve yet.
_UNSUPPORTED_BLOCKS = {
    "image": "this model does not accept images",
    "document": "document blocks are not supported yet",
    "tool_use": "tool_use blocks are not supported yet",
    "tool_result": "tool_result blocks are not supported yet",
    "thinking": "thinking blocks are not supported yet",
    "redacted_thinking": "redacted_thinking blocks are not supported yet",
    "search_result": "search_result blocks are not supported",
    "server_tool_use": "server tools are not supported",
    "web_search_tool_result": "server tools are not supported",
    "container_upload": "container_upload blocks are not supported",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheControl(_Strict):
    """Accepted everywhere Anthropic allows it: the worker caches every prompt prefix anyway."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class OtherBlock(BaseModel):
    """Any non-text block: kept loose so `refuse_unsupported` can name it clearly."""

    model_config = ConfigDict(extra="allow")
    type: str


def _block_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "text" if kind == "text" else "other"


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_kind),
]


class MessageParam(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Metadata(_Strict):
    user_id: str | None = Field(default=None, max_length=256)


class ThinkingConfig(BaseModel):
    """Loose on purpose: any shape other than `{"type": "disabled"}` is refused by name."""

    model_config = ConfigDict(extra="allow")
    type: str


def _join(blocks: list[TextBlock]) -> str:
    return BLOCK_SEPARATOR.join(b.text for b in blocks)


class CountTokensRequest(_Strict):
    """The prompt-shaping fields, shared by `/v1/messages` and its `count_tokens`."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[MessageParam] = Field(min_length=1, max_length=100_000)
    system: str | list[TextBlock] | None = None
    cache_control: CacheControl | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: ThinkingConfig | None = None

    def refuse_unsupported(self) -> None:
        if self.tools:
            raise DomainError("tools are not supported yet", param="tools")
        if self.tool_choice is not None and self.tool_choice.get("type") not in ("auto", "none"):
            raise DomainError("tool_choice is not supported yet", param="tool_choice")
        if self.thinking is not None and self.thinking.type != "disabled":
            raise DomainError(
                'extended thinking is not supported yet; omit \'thinking\' or send {"type": "disabled"}',
                param="thinking",
            )
        if isinstance(self.system, list):
            for j, sys_block in enumerate(self.system):
                if sys_block.citations:
                    raise DomainError("citations are not supported", param=f"system.{j}.citations")
        last = len(self.messages) - 1
        for i, m in enumerate(self.messages):
            if isinstance(m.content, list):
                for j, block in enumerate(m.content):
                    where = f"messages.{i}.content.{j}"
                    if isinstance(block, OtherBlock):
                        reason = _UNSUPPORTED_BLOCKS.get(block.type)
                        raise DomainError(
                            reason or f"unknown content block type '{block.type[:40]}'", param=where
                        )
                    if block.citations:
                        raise DomainError("citations are not supported", param=f"{where}.citations")
            if not self.text_of(m) and not (i == last and m.role == "assistant"):
                raise DomainError(
                    "all messages must have non-empty content except for the optional final assistant message",
                    param=f"messages.{i}",
                )

    @staticmethod
    def text_of(message: MessageParam) -> str:
        if isinstance(message.content, str):
            return message.content
        return _join([b for b in message.content if isinstance(b, TextBlock)])

    def system_text(self) -> str | None:
        if self.system is None:
            return None
        return self.system if isinstance(self.system, str) else _join(self.system)

    def chat_prompt(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Messages as a chat template expects them, and the template kwargs they need.

        System first; consecutive turns of one role combined, as Anthropic does. A final
        assistant turn is a prefill that the answer continues; an empty one means none.
        """
        out: list[dict[str, Any]] = []
        system = self.system_text()
        if system:
            out.append({"role": "system", "content": system})
        for m in self.messages:
            text = self.text_of(m)
            if out and out[-1]["role"] == m.role:
                if text:
                    out[-1]["content"] += TURN_SEPARATOR + text
            else:
                out.append({"role": m.role, "content": text})
        if out and out[-1]["role"] == "assistant":
            if out[-1]["content"]:
                return out, {"add_generation_prompt": False, "continue_final_message": True}
            out.pop()
        return out, {}


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    stream: bool = False

    @field_validator("stop_sequences")
    @classmethod
    def _stop_sequences(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        if any(len(s) > 200 for s in v):
            raise ValueError("a stop sequence is longer than 200 characters")
        return v

    def sampling_values(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}

    def stop_list(self) -> list[str]:
        return [s for s in self.stop_sequences or [] if s]
