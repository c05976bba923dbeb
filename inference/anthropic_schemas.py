"""Request bodies of the Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`).

Same rules as the OpenAI bodies: unknown fields are refused (`extra="forbid"`), and what we
parse but cannot honour yet is refused by `refuse_unsupported` with a 400 that names it.
Params in errors use Anthropic's dotted paths (`messages.0.content.1`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from inference.media import ImageSource
from inference.schemas import MAX_INT32
from mlxmanager.errors import DomainError
from mlxmanager.validtext import ValidUnicode

# Between text blocks of one message or of `system`, and between consecutive turns of the
# same role, which Anthropic combines into one turn.
BLOCK_SEPARATOR = "\n"
TURN_SEPARATOR = "\n\n"

# Content block types Anthropic defines that we parse but cannot serve yet.
_UNSUPPORTED_BLOCKS = {
    "image": "images in tool results are not supported",
    "document": "document blocks are not supported yet",
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


class Base64ImageSource(_Strict):
    type: Literal["base64"]
    media_type: str = Field(max_length=100)
    data: str


class URLImageSource(_Strict):
    type: Literal["url"]
    url: str = Field(max_length=8192)


class ImageBlock(_Strict):
    type: Literal["image"]
    source: Annotated[Base64ImageSource | URLImageSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None

    def as_source(self, param: str) -> ImageSource:
        src = self.source
        if isinstance(src, Base64ImageSource):
            return ImageSource(param=param, data=src.data, media_type=src.media_type)
        return ImageSource(param=param, url=src.url)


class OtherBlock(BaseModel):
    """Any other block: kept loose so `refuse_unsupported` can name it clearly."""

    model_config = ConfigDict(extra="allow")
    type: str


class ToolUseBlock(_Strict):
    """A call the assistant made in an earlier turn."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[TextBlock | OtherBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return BLOCK_SEPARATOR.join(b.text for b in self.content if isinstance(b, TextBlock))


class ThinkingBlock(_Strict):
    """Reasoning from an earlier turn; the chat template decides whether the model sees it."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None
    cache_control: CacheControl | None = None


class RedactedThinkingBlock(_Strict):
    """Another provider's encrypted reasoning: accepted, and not shown to the model."""

    type: Literal["redacted_thinking"]
    data: str


_KNOWN_BLOCKS = {"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"}


def _block_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) and kind in _KNOWN_BLOCKS else "other"  # "type": [] too


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_kind),
]


class MessageParam(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Metadata(_Strict):
    user_id: str | None = Field(default=None, max_length=256)


class ThinkingConfig(_Strict):
    """`enabled` (with a token budget for the reasoning), `adaptive` or `disabled`."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)


_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


class ToolParam(BaseModel):
    """A client tool. Loose so that server tools (`type: "web_search_…"`) are refused by name."""

    model_config = ConfigDict(extra="allow")
    name: str
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    cache_control: CacheControl | None = None
    strict: bool | None = None


class OutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Strict):
    """Structured output (`format`, enforced by constrained decoding) and `effort`, which
    is passed to the chat template as `reasoning_effort`."""

    format: OutputFormat | None = None
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


def _combine(
    first: str | list[dict[str, Any]], second: str | list[dict[str, Any]]
) -> str | list[dict[str, Any]]:
    """Two turns of one role as one (text joined; parts lists concatenated)."""
    if isinstance(first, str) and isinstance(second, str):
        return first + (TURN_SEPARATOR if first else "") + second

    def parts(c: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
        return (
            [{"type": "text", "text": c}] if isinstance(c, str) and c else ([] if isinstance(c, str) else c)
        )

    head = parts(first)
    return [*head, *([{"type": "text", "text": TURN_SEPARATOR}] if head else []), *parts(second)]


def _join(blocks: list[TextBlock]) -> str:
    return BLOCK_SEPARATOR.join(b.text for b in blocks)


class CountTokensRequest(_Strict, ValidUnicode):
    """The prompt-shaping fields, shared by `/v1/messages` and its `count_tokens`."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[MessageParam] = Field(min_length=1, max_length=100_000)
    system: str | list[TextBlock] | None = None
    cache_control: CacheControl | None = None
    tools: list[ToolParam] | None = Field(default=None, max_length=1024)
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None

    def refuse_unsupported(self) -> None:
        for i, tool in enumerate(self.tools or []):
            if tool.type not in (None, "custom"):
                raise DomainError(
                    f"server tools ('{tool.type[:60]}') are not supported", param=f"tools.{i}.type"
                )
            if not _TOOL_NAME.match(tool.name):
                raise DomainError("tool names must match ^[a-zA-Z0-9_-]{1,128}$", param=f"tools.{i}.name")
            if tool.input_schema is None:
                raise DomainError("Field required", param=f"tools.{i}.input_schema")
            extra = set(tool.model_extra or {})
            if extra:
                raise DomainError(f"Extra inputs are not permitted: {sorted(extra)[0]}", param=f"tools.{i}")
        self.tool_choice_values()
        if self.thinking is not None and self.thinking.type == "enabled" and not self.thinking.budget_tokens:
            raise DomainError(
                "budget_tokens is required when thinking is enabled", param="thinking.budget_tokens"
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
                    if isinstance(block, TextBlock) and block.citations:
                        raise DomainError("citations are not supported", param=f"{where}.citations")
                    if isinstance(block, ImageBlock) and m.role != "user":
                        raise DomainError("image blocks belong to user messages", param=where)
                    if isinstance(block, ToolUseBlock) and m.role != "assistant":
                        raise DomainError("tool_use blocks belong to assistant messages", param=where)
                    if isinstance(block, ToolResultBlock):
                        if m.role != "user":
                            raise DomainError("tool_result blocks belong to user messages", param=where)
                        for k, part in enumerate(block.content if isinstance(block.content, list) else []):
                            if isinstance(part, OtherBlock):
                                reason = _UNSUPPORTED_BLOCKS.get(part.type)
                                raise DomainError(
                                    reason or f"unsupported tool_result content '{part.type[:40]}'",
                                    param=f"{where}.content.{k}",
                                )
            if not self._has_content(m) and not (i == last and m.role == "assistant"):
                raise DomainError(
                    "all messages must have non-empty content except for the optional final assistant message",
                    param=f"messages.{i}",
                )

    @staticmethod
    def text_of(message: MessageParam) -> str:
        if isinstance(message.content, str):
            return message.content
        return _join([b for b in message.content if isinstance(b, TextBlock)])

    def _has_content(self, message: MessageParam) -> bool:
        if self.text_of(message):
            return True
        return isinstance(message.content, list) and any(
            isinstance(b, ToolUseBlock | ToolResultBlock | ThinkingBlock | ImageBlock)
            for b in message.content
        )

    def image_sources(self) -> list[ImageSource]:
        """Every image block, in order, with where it sits in the request."""
        return [
            block.as_source(f"messages.{i}.content.{j}")
            for i, m in enumerate(self.messages)
            if isinstance(m.content, list)
            for j, block in enumerate(m.content)
            if isinstance(block, ImageBlock)
        ]

    def tool_choice_values(self) -> tuple[str, str | None, bool]:
        """(mode, tool name, parallel calls allowed) in the worker's terms."""
        choice = self.tool_choice
        if choice is None:
            return "auto", None, True
        parallel = not choice.disable_parallel_tool_use
        if choice.type == "tool":
            if not choice.name or choice.name not in {t.name for t in self.tools or []}:
                raise DomainError(
                    f"tool_choice names a tool that is not in tools: {choice.name!r}",
                    param="tool_choice.name",
                )
            return "function", choice.name, parallel
        if choice.type == "any":
            if not self.tools:
                raise DomainError("tool_choice 'any' needs tools", param="tool_choice")
            return "required", None, parallel
        return choice.type, None, parallel

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """The tools in the OpenAI shape that chat templates and the worker expect."""
        if not self.tools:
            return None
        out = []
        for t in self.tools:
            fn: dict[str, Any] = {"name": t.name, "parameters": t.input_schema or {"type": "object"}}
            if t.description:
                fn["description"] = t.description
            if t.strict:
                fn["strict"] = True
            out.append({"type": "function", "function": fn})
        return out

    def thinking_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.thinking is not None:
            kwargs["enable_thinking"] = self.thinking.type != "disabled"
        if self.output_config is not None and self.output_config.effort is not None:
            kwargs["reasoning_effort"] = self.output_config.effort
        return kwargs

    def constraint(self) -> dict[str, Any] | None:
        """`output_config.format` as the worker's constraint."""
        fmt = self.output_config.format if self.output_config is not None else None
        return {"type": "json_schema", "schema": fmt.schema_} if fmt is not None else None

    def thinking_budget(self) -> int | None:
        if self.thinking is not None and self.thinking.type == "enabled":
            return self.thinking.budget_tokens
        return None

    def system_text(self) -> str | None:
        if self.system is None:
            return None
        return self.system if isinstance(self.system, str) else _join(self.system)

    def chat_prompt(self, *, images: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Messages as a chat template expects them, and the template kwargs they need.

        System first; consecutive turns of one role combined, as Anthropic does. A final
        assistant turn is a prefill that the answer continues; an empty one means none.
        With `images`, a turn holding images keeps its parts in order ({"type": "text", ...}
        and {"type": "image"}).
        """
        out: list[dict[str, Any]] = []
        system = self.system_text()
        if system:
            out.append({"role": "system", "content": system})
        for m in self.messages:
            if isinstance(m.content, list):
                # Tool results answer the previous turn's calls: they come first, as tool messages.
                for block in m.content:
                    if isinstance(block, ToolResultBlock):
                        content = block.text()
                        if block.is_error:
                            content = f"Error: {content}"
                        out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": content})
            text: str | list[dict[str, Any]] = self.text_of(m)
            if images and isinstance(m.content, list) and any(isinstance(b, ImageBlock) for b in m.content):
                text = [
                    {"type": "text", "text": b.text} if isinstance(b, TextBlock) else {"type": "image"}
                    for b in m.content
                    if isinstance(b, TextBlock | ImageBlock)
                ]
            calls = (
                [b for b in m.content if isinstance(b, ToolUseBlock)] if isinstance(m.content, list) else []
            )
            thinking = (
                [b.thinking for b in m.content if isinstance(b, ThinkingBlock)]
                if isinstance(m.content, list)
                else []
            )
            empty = not (text or calls or thinking)
            if empty and (m.role == "user" or (out and out[-1]["role"] in (m.role, "tool"))):
                continue
            if out and out[-1]["role"] == m.role and not calls and not out[-1].get("tool_calls"):
                if text:
                    out[-1]["content"] = _combine(out[-1]["content"], text)
                if thinking:
                    out[-1]["reasoning_content"] = "\n".join(
                        [out[-1].get("reasoning_content", ""), *thinking]
                    ).strip()
                continue
            msg: dict[str, Any] = {"role": m.role, "content": text}
            if calls:
                msg["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.input}}
                    for c in calls
                ]
            if thinking:
                msg["reasoning_content"] = "\n".join(thinking)
            out.append(msg)
        kwargs = self.thinking_kwargs()
        if out and out[-1]["role"] == "assistant" and not out[-1].get("tool_calls"):
            if out[-1]["content"]:
                return out, {**kwargs, "add_generation_prompt": False, "continue_final_message": True}
            out.pop()
        return out, kwargs


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, le=MAX_INT32)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=MAX_INT32)
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

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        budget = self.thinking.budget_tokens if self.thinking is not None else None
        if budget is not None and budget >= self.max_tokens:
            raise DomainError("max_tokens must be greater than thinking.budget_tokens", param="max_tokens")

    def sampling_values(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}

    def stop_list(self) -> list[str]:
        return [s for s in self.stop_sequences or [] if s]
