"""Request bodies of the OpenAI-compatible API.

Unknown fields are refused (`extra="forbid"`), and fields we parse but cannot honour yet
are refused by `refuse_unsupported` with a 400 that names them: nothing is silently
ignored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inference.media import ImageSource
from mlxmanager.errors import DomainError
from mlxmanager.validtext import ValidUnicode, find_invalid_unicode

# Upper bound of counts and ids: past it the worker protocol (msgpack) cannot carry them.
MAX_INT32 = 2**31 - 1


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


_TOOL_NAME = r"^[a-zA-Z0-9_.-]{1,64}$"
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=256)
    arguments: str = "{}"  # a JSON object, as a string


class ToolCallParam(_Strict):
    """A call the assistant made in an earlier turn."""

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(_Strict):
    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[ToolCallParam] | None = None
    tool_call_id: str | None = None
    # What a reasoning model thought in that turn (sent back by some clients).
    reasoning_content: str | None = None
    refusal: str | None = None


class SamplingFields(_Strict, ValidUnicode):
    """Parameters shared by chat and text completions (a request body: invalid Unicode anywhere
    in it is refused with the field's location)."""

    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=MAX_INT32)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    user: str | None = Field(default=None, max_length=256)

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


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=2048)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=1024)
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: Literal[REASONING_EFFORTS] | None = None  # type: ignore[valid-type]

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.top_logprobs is not None and not self.logprobs:
            raise DomainError("top_logprobs needs logprobs: true", param="top_logprobs")
        self.constraint()
        self.tool_choice_values()
        for i, m in enumerate(self.messages):
            if m.role == "tool" and not m.tool_call_id:
                raise DomainError("a tool message needs 'tool_call_id'", param=f"messages[{i}].tool_call_id")
            if m.tool_calls and m.role != "assistant":
                raise DomainError(
                    "only assistant messages carry tool_calls", param=f"messages[{i}].tool_calls"
                )
            for j, call in enumerate(m.tool_calls or []):
                where = f"messages[{i}].tool_calls[{j}].function.arguments"
                arguments = _json_object(call.function.arguments)
                if not isinstance(arguments, dict):
                    raise DomainError("arguments must be a JSON object", param=where)
                # A "\ud800" escape inside the JSON string decodes to a lone surrogate.
                if (bad := find_invalid_unicode(arguments)) is not None:
                    raise DomainError(f"arguments hold invalid Unicode: {bad[1]}", param=where)
            if isinstance(m.content, list) and m.role != "user":
                for j, part in enumerate(m.content):
                    if isinstance(part, ImagePart):
                        raise DomainError(
                            "images belong to user messages", param=f"messages[{i}].content[{j}]"
                        )

    def tool_choice_values(self) -> tuple[str, str | None]:
        """`tool_choice` as (mode, tool name): auto (the default), none, required or function."""
        choice = self.tool_choice
        if choice is None:
            return "auto", None
        if choice in ("none", "auto", "required"):
            if choice == "required" and not self.tools:
                raise DomainError("tool_choice 'required' needs tools", param="tool_choice")
            return choice, None
        if isinstance(choice, dict) and choice.get("type") == "function":
            name = (choice.get("function") or {}).get("name")
            if not isinstance(name, str) or name not in {t.function.name for t in self.tools or []}:
                raise DomainError(
                    f"tool_choice names a tool that is not in tools: {name!r}", param="tool_choice"
                )
            return "function", name
        raise DomainError(
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )

    def constraint(self) -> dict[str, Any] | None:
        """`response_format` as the worker's constraint: None (text), json_object or json_schema."""
        rf = self.response_format
        if rf is None or rf == {"type": "text"}:
            return None
        kind = rf.get("type")
        if kind == "json_object" and set(rf) == {"type"}:
            return {"type": "json_object"}
        if kind == "json_schema" and set(rf) <= {"type", "json_schema"}:
            spec = rf.get("json_schema")
            if isinstance(spec, dict) and set(spec) <= {"name", "schema", "strict", "description"}:
                schema = spec.get("schema", {"type": "object"})
                if isinstance(schema, dict):
                    return {"type": "json_schema", "schema": schema}
        raise DomainError(
            'response_format must be {"type": "text"}, {"type": "json_object"} or '
            '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}',
            param="response_format",
        )

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def logprobs_count(self) -> int | None:
        """The worker's `logprobs`: None (off) or how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def reasoning_kwargs(self) -> dict[str, Any]:
        """Chat-template kwargs for `reasoning_effort` ("none" turns thinking off)."""
        if self.reasoning_effort is None:
            return {}
        if self.reasoning_effort == "none":
            return {"enable_thinking": False}
        return {"enable_thinking": True, "reasoning_effort": self.reasoning_effort}

    def image_sources(self) -> list[ImageSource]:
        """Every image part, in order, with where it sits in the request."""
        return [
            ImageSource(param=f"messages[{i}].content[{j}].image_url", url=part.image_url.url)
            for i, m in enumerate(self.messages)
            if isinstance(m.content, list)
            for j, part in enumerate(m.content)
            if isinstance(part, ImagePart)
        ]

    def template_messages(self, *, images: bool = False) -> list[dict[str, Any]]:
        """Messages as the chat template expects them (plain string content; tool-call
        arguments as objects, as Hugging Face templates expect). With `images`, a message
        holding images keeps its parts in order: {"type": "text", ...} and {"type": "image"}."""
        out = []
        for m in self.messages:
            content: str | list[dict[str, Any]]
            if isinstance(m.content, list):
                if images and any(isinstance(p, ImagePart) for p in m.content):
                    content = [
                        {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
                        for p in m.content
                    ]
                else:
                    content = "".join(p.text for p in m.content if isinstance(p, TextPart))
            else:
                content = m.content or ""
            role = "system" if m.role == "developer" else m.role
            msg: dict[str, Any] = {"role": role, "content": content}
            if m.tool_calls:
                msg["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {
                            "name": c.function.name,
                            "arguments": _json_object(c.function.arguments),
                        },
                    }
                    for c in m.tool_calls
                ]
            if m.role == "tool":
                msg["tool_call_id"] = m.tool_call_id
                if m.name:
                    msg["name"] = m.name
            if m.reasoning_content and m.role == "assistant":
                msg["reasoning_content"] = m.reasoning_content
            out.append(msg)
        return out


def _json_object(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except json.JSONDecodeError:
        return None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field()
    # The legacy shape: how many alternatives per token (0: only the chosen token's).
    logprobs: int | None = Field(default=None, ge=0, le=20)
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
        if self.echo and self.logprobs is not None:
            raise DomainError(
                "echo with logprobs is not supported (no log-probabilities for prompt tokens)", param="echo"
            )
        if self.best_of not in (None, 1):
            raise DomainError("best_of is not supported", param="best_of")
        if self.suffix:
            raise DomainError("suffix is not supported", param="suffix")

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# A token id: anything else (negative, or past 32 bits) is refused by the schema, not later.
TokenId = Annotated[int, Field(ge=0, le=MAX_INT32)]


class EmbeddingRequest(_Strict, ValidUnicode):
    """`POST /v1/embeddings`: `input` is a string, a list of strings, token ids, or lists of them."""

    model: str
    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    user: str | None = Field(default=None, max_length=256)

    def inputs(self) -> tuple[list[str] | None, list[list[int]] | None]:
        """(texts, token_ids): exactly one is set."""
        value = self.input
        if isinstance(value, str):
            return [value], None
        if value and all(isinstance(v, int) for v in value):
            return None, [list(value)]  # type: ignore[arg-type]
        if value and all(isinstance(v, list) for v in value):
            return None, [list(v) for v in value]  # type: ignore[arg-type, union-attr]
        return list(value), None  # type: ignore[arg-type]
