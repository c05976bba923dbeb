"""Request body of the OpenAI Responses API (`POST /v1/responses`).

Same rules as the other bodies: unknown fields are refused (`extra="forbid"`), and what we
parse but cannot honour is refused by `refuse_unsupported` with a 400 that names it. Input
items and tools are checked one by one so the error names the item (`input[2].content[0]`).
Responses are not stored: `previous_response_id`, `store: true` and item references → 400.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.schemas import MAX_INT32, REASONING_EFFORTS
from mlxmanager.errors import DomainError
from mlxmanager.validtext import ValidUnicode, find_invalid_unicode

_TOOL_NAME = r"^[a-zA-Z0-9_.-]{1,64}$"
NOT_STORED = (
    "this server does not store responses; send the whole conversation in 'input' "
    "(earlier output items included) with store omitted or false"
)
# Input parts and items other providers' clients may send, and why we refuse them.
_UNSUPPORTED_PARTS = {
    "input_image": "images are not served on /v1/responses yet: send them to /v1/chat/completions",
    "input_file": "file inputs are not supported",
    "input_audio": "audio inputs are not supported",
}
_UNSUPPORTED_ITEMS = {"item_reference": f"item references need stored responses: {NOT_STORED}"}
# `include` values we can honour (reasoning items always carry their text in `content`).
_INCLUDES = {"reasoning.encrypted_content"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Part(_Strict):
    type: str
    text: str | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]
    id: str | None = None
    status: str | None = None
    phase: str | None = None


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[dict[str, Any]]
    id: str | None = None
    status: str | None = None


class ReasoningItem(_Strict):
    """Reasoning from an earlier turn: shown to the chat template as `reasoning_content`."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict[str, Any]] = []
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None
    status: str | None = None

    def text(self) -> str:
        parts = self.content or self.summary
        return "\n".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


_ITEMS: dict[str, type[_Strict]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextConfig(_Strict):
    format: dict[str, Any] | None = None
    verbosity: Literal["medium"] | None = None


class ReasoningConfig(_Strict):
    effort: Literal[REASONING_EFFORTS] | None = None  # type: ignore[valid-type]
    # Accepted, not honoured: no summaries are generated; reasoning items carry the whole text.
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptions(_Strict):
    include_obfuscation: bool | None = None


def _invalid(exc: ValidationError, where: str) -> DomainError:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    param = f"{where}.{loc}" if loc else where
    if err.get("type") == "extra_forbidden":
        return DomainError(f"Unrecognized argument: {param}", param=param)
    if err.get("type") == "missing":
        return DomainError(f"Missing required parameter: '{param}'", param=param)
    return DomainError(f"Invalid value for '{param}': {err.get('msg')}", param=param)


def _arguments(text: str, where: str) -> Any:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise DomainError("arguments must be a JSON object", param=f"{where}.arguments")
    # A "\ud800" escape inside the JSON string decodes to a lone surrogate.
    if (bad := find_invalid_unicode(value)) is not None:
        raise DomainError(f"arguments hold invalid Unicode: {bad[1]}", param=f"{where}.arguments")
    return value


class ResponsesRequest(_Strict, ValidUnicode):
    model: str = Field(min_length=1, max_length=256)
    input: str | Annotated[list[dict[str, Any]], Field(max_length=100_000)]
    instructions: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=1024)
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tool_calls: int | None = Field(default=None, ge=1, le=MAX_INT32)
    prompt: Any = None
    conversation: Any = None

    # ---- validation beyond the types --------------------------------------------------------

    def refuse_unsupported(self) -> None:
        if self.previous_response_id:
            raise DomainError(
                f"previous_response_id is not supported: {NOT_STORED}", param="previous_response_id"
            )
        if self.store:
            raise DomainError(f"store: true is not supported: {NOT_STORED}", param="store")
        if self.conversation is not None:
            raise DomainError(f"conversations are not supported: {NOT_STORED}", param="conversation")
        if self.prompt is not None:
            raise DomainError("stored prompt templates are not supported", param="prompt")
        if self.background:
            raise DomainError("background responses are not supported; use stream: true", param="background")
        if self.truncation == "auto":
            raise DomainError(
                "truncation 'auto' is not supported: a prompt longer than the model's context is refused",
                param="truncation",
            )
        if self.top_logprobs:
            raise DomainError("top_logprobs is not supported yet", param="top_logprobs")
        if self.max_tool_calls is not None:
            raise DomainError(
                "max_tool_calls is not supported; parallel_tool_calls: false allows one call",
                param="max_tool_calls",
            )
        for i, inc in enumerate(self.include or []):
            if inc not in _INCLUDES:
                raise DomainError(f"include value '{inc[:60]}' is not supported", param=f"include[{i}]")
        if isinstance(self.input, list) and not self.input:
            raise DomainError("input must not be empty", param="input")
        self.function_tools()
        self.tool_choice_values()
        self.constraint()
        self.chat_messages()

    # ---- tools ---------------------------------------------------------------------------------

    def function_tools(self) -> list[FunctionTool]:
        tools: list[FunctionTool] = []
        for i, raw in enumerate(self.tools or []):
            kind = raw.get("type")
            if kind != "function":
                raise DomainError(
                    f"tools of type '{str(kind)[:60]}' (built-in or custom) are not supported; only function tools are",
                    param=f"tools[{i}].type",
                )
            try:
                tools.append(FunctionTool.model_validate(raw))
            except ValidationError as exc:
                raise _invalid(exc, f"tools[{i}]") from None
        return tools

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """Function tools in the chat-completions shape. As on OpenAI, `strict` defaults to true:
        the call's arguments are constrained to the schema where the model's format allows it."""
        out = []
        for t in self.function_tools():
            fn: dict[str, Any] = {"name": t.name, "parameters": t.parameters or {"type": "object"}}
            if t.description:
                fn["description"] = t.description
            fn["strict"] = t.strict is not False
            out.append({"type": "function", "function": fn})
        return out or None

    def tool_choice_values(self) -> tuple[str, str | None]:
        choice = self.tool_choice
        if choice is None:
            return "auto", None
        if choice in ("none", "auto", "required"):
            if choice == "required" and not self.tools:
                raise DomainError("tool_choice 'required' needs tools", param="tool_choice")
            return choice, None
        if isinstance(choice, dict) and choice.get("type") == "function" and set(choice) <= {"type", "name"}:
            name = choice.get("name")
            if not isinstance(name, str) or name not in {t.name for t in self.function_tools()}:
                raise DomainError(
                    f"tool_choice names a tool that is not in tools: {name!r}", param="tool_choice"
                )
            return "function", name
        raise DomainError(
            'tool_choice must be "none", "auto", "required" or {"type": "function", "name": ...}',
            param="tool_choice",
        )

    # ---- text format and reasoning ----------------------------------------------------------------

    def constraint(self) -> dict[str, Any] | None:
        """`text.format` as the worker's constraint: None (text), json_object or json_schema."""
        fmt = self.text.format if self.text is not None else None
        if fmt is None or fmt == {"type": "text"}:
            return None
        kind = fmt.get("type")
        if kind == "json_object" and set(fmt) == {"type"}:
            return {"type": "json_object"}
        if kind == "json_schema" and set(fmt) <= {"type", "name", "schema", "strict", "description"}:
            schema = fmt.get("schema")
            if isinstance(schema, dict) and isinstance(fmt.get("name"), str):
                return {"type": "json_schema", "schema": schema}
        raise DomainError(
            'text.format must be {"type": "text"}, {"type": "json_object"} or '
            '{"type": "json_schema", "name": ..., "schema": {...}, "strict": true}',
            param="text.format",
        )

    def text_echo(self) -> dict[str, Any]:
        fmt = self.text.format if self.text is not None and self.text.format else {"type": "text"}
        return {"format": fmt, "verbosity": "medium"}

    def reasoning_kwargs(self) -> dict[str, Any]:
        effort = self.reasoning.effort if self.reasoning is not None else None
        if effort is None:
            return {}
        if effort == "none":
            return {"enable_thinking": False}
        return {"enable_thinking": True, "reasoning_effort": effort}

    # ---- input → chat messages -----------------------------------------------------------------------

    def chat_messages(self) -> list[dict[str, Any]]:
        """`instructions` and `input` as chat-template messages: function calls join the
        assistant turn they belong to, their outputs become `tool` messages, and reasoning items
        become the next assistant turn's `reasoning_content`."""
        out: list[dict[str, Any]] = []
        if self.instructions:
            out.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            out.append({"role": "user", "content": self.input})
            return out
        reasoning: list[str] = []

        def assistant() -> dict[str, Any]:
            if not (out and out[-1]["role"] == "assistant"):
                out.append({"role": "assistant", "content": ""})
            if reasoning:
                out[-1]["reasoning_content"] = "\n".join(reasoning)
                reasoning.clear()
            return out[-1]

        for i, raw in enumerate(self.input):
            where = f"input[{i}]"
            kind = raw.get("type", "message")
            model = _ITEMS.get(kind)
            if model is None:
                reason = (
                    _UNSUPPORTED_ITEMS.get(kind)
                    or f"input items of type '{str(kind)[:60]}' are not supported"
                )
                raise DomainError(reason, param=f"{where}.type")
            try:
                item = model.model_validate(raw)
            except ValidationError as exc:
                raise _invalid(exc, where) from None
            if isinstance(item, MessageItem):
                role = "system" if item.role == "developer" else item.role
                text = _message_text(item, where)
                if role == "assistant":
                    msg = assistant()
                    if msg.get("tool_calls"):  # text after a call starts a new turn
                        out.append({"role": "assistant", "content": text})
                    else:
                        msg["content"] += text
                else:
                    out.append({"role": role, "content": text})
            elif isinstance(item, FunctionCallItem):
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": _arguments(item.arguments, where)}}  # fmt: skip
                assistant().setdefault("tool_calls", []).append(call)
            elif isinstance(item, FunctionCallOutputItem):
                content = (
                    item.output if isinstance(item.output, str) else _parts_text(item.output, where, "output")
                )
                out.append({"role": "tool", "tool_call_id": item.call_id, "content": content})
            elif isinstance(item, ReasoningItem):
                reasoning.append(item.text())
        if not any(m["role"] in ("user", "tool") for m in out):
            raise DomainError("input needs at least one user message or function_call_output", param="input")
        return out


def _message_text(item: MessageItem, where: str) -> str:
    if isinstance(item.content, str):
        return item.content
    allowed = {"output_text", "refusal"} if item.role == "assistant" else {"input_text"}
    return _parts_text(item.content, where, "content", allowed=allowed)


def _parts_text(
    parts: list[dict[str, Any]], where: str, field: str, *, allowed: set[str] | None = None
) -> str:
    allowed = allowed or {"input_text"}
    texts = []
    for j, raw in enumerate(parts):
        param = f"{where}.{field}[{j}]"
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in allowed:
            reason = _UNSUPPORTED_PARTS.get(str(kind)) or (
                f"content parts of type '{str(kind)[:40]}' are not allowed here (expected {', '.join(sorted(allowed))})"
            )
            raise DomainError(reason, param=f"{param}.type")
        try:
            part = _Part.model_validate(raw)
        except ValidationError as exc:
            raise _invalid(exc, param) from None
        texts.append((part.refusal if kind == "refusal" else part.text) or "")
    return "".join(texts)
