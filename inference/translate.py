"""Protocol translation between OpenAI Chat Completions and Anthropic Messages.

Requests go up translated (`messages_to_chat`, `chat_to_messages`); answers come back
decoded into the gateway's neutral events (`protocol.Output`), whole (`chat_outputs`,
`message_outputs`) or streamed (`ChatChunkDecoder`, `MessageEventDecoder`), and the
client's own encoder (`inference.encoders`) writes them, as it does for local answers.

What one protocol can say and the other can't is refused with a 400 that names it
(`TranslationError`), never dropped silently.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from inference import protocol as p
from inference.events import UpstreamStreamError
from mlxmanager.errors import DomainError


class TranslationError(DomainError):
    """The request uses something the upstream's protocol has no equivalent for."""


def _refuse(field: str, upstream: str) -> TranslationError:
    return TranslationError(f"'{field}' cannot be sent to {upstream} upstream of this route", param=field)


def _args(arguments: str | None) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _text_of_blocks(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


# ---- finish reasons and usage ----------------------------------------------------------

_TO_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_TO_OPENAI_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def anthropic_usage(openai_usage: dict[str, Any] | None) -> dict[str, int]:
    u = openai_usage or {}
    cached = int(((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
    return {
        "input_tokens": max(int(u.get("prompt_tokens") or 0) - cached, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": int(u.get("completion_tokens") or 0),
    }


def openai_usage(anthropic_usage: dict[str, Any] | None) -> dict[str, Any]:
    u = anthropic_usage or {}
    cached = int(u.get("cache_read_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + cached + int(u.get("cache_creation_input_tokens") or 0)
    completion = int(u.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def tokens_of_openai_usage(u: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) from an OpenAI usage object."""
    cached = int(((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
    return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0), cached


def tokens_of_anthropic_usage(u: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) from an Anthropic usage object; prompt counts cache reads."""
    cached = int(u.get("cache_read_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + cached + int(u.get("cache_creation_input_tokens") or 0)
    return prompt, int(u.get("output_tokens") or 0), cached


# ---- Anthropic client → OpenAI-compatible upstream ---------------------------------------

_MESSAGES_FIELDS = {"model", "messages", "system", "max_tokens", "temperature", "top_p", "top_k",
                    "stop_sequences", "stream", "metadata", "tools", "tool_choice", "cache_control",
                    "thinking"}  # fmt: skip


def _image_url(block: dict[str, Any]) -> dict[str, Any]:
    src = block.get("source") or {}
    if src.get("type") == "base64":
        url = f"data:{src.get('media_type', 'image/png')};base64,{src.get('data', '')}"
    elif src.get("type") == "url":
        url = src.get("url", "")
    else:
        raise TranslationError("only base64 and url image sources can be translated", param="messages")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(block: dict[str, Any]) -> str:
    text = _text_of_blocks(block.get("content"))
    return f"Error: {text}" if block.get("is_error") else text


def messages_to_chat(body: dict[str, Any], *, model: str, provider: str) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI Chat Completions request."""
    upstream = "an OpenAI" if provider == "openai" else "an OpenAI-compatible"
    for key, value in body.items():
        if key not in _MESSAGES_FIELDS and value is not None:
            raise _refuse(key, upstream)
    out: dict[str, Any] = {"model": model}
    msgs: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        msgs.append({"role": "system", "content": _text_of_blocks(system)})
    for i, m in enumerate(body.get("messages") or []):
        role, content = m.get("role"), m.get("content")
        if isinstance(content, str):
            msgs.append({"role": role, "content": content})
            continue
        if role == "user":
            parts: list[dict[str, Any]] = []
            for j, b in enumerate(content or []):
                kind = b.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": b.get("text", "")})
                elif kind == "image":
                    parts.append(_image_url(b))
                elif kind == "tool_result":
                    # OpenAI wants each result as a `tool` message right after the calls.
                    msgs.append({"role": "tool", "tool_call_id": b.get("tool_use_id", ""),
                                 "content": _tool_result_text(b)})  # fmt: skip
                else:
                    raise TranslationError(
                        f"'{kind}' blocks cannot be sent to {upstream} upstream",
                        param=f"messages.{i}.content.{j}",
                    )
            if parts:
                only_text = all(p["type"] == "text" for p in parts)
                msgs.append(
                    {"role": "user", "content": "\n".join(p["text"] for p in parts) if only_text else parts}
                )
        else:
            text = []
            calls = []
            for b in content or []:
                kind = b.get("type")
                if kind == "text":
                    text.append(b.get("text", ""))
                elif kind == "tool_use":
                    calls.append({"id": b.get("id", ""), "type": "function",
                                  "function": {"name": b.get("name", ""),
                                               "arguments": json.dumps(b.get("input") or {})}})  # fmt: skip
                # thinking / redacted_thinking: model-specific, not replayable upstream
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
            if calls:
                msg["tool_calls"] = calls
            msgs.append(msg)
    out["messages"] = msgs
    out["max_completion_tokens" if provider == "openai" else "max_tokens"] = body.get("max_tokens")
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("top_k") is not None:
        if provider == "openai":
            raise _refuse("top_k", upstream)
        out["top_k"] = body["top_k"]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if (body.get("metadata") or {}).get("user_id"):
        out["user"] = body["metadata"]["user_id"]
    thinking = body.get("thinking")
    if thinking and thinking.get("type") != "disabled":
        raise _refuse("thinking", upstream)
    tools = body.get("tools")
    if tools:
        out["tools"] = []
        for t in tools:
            if t.get("type") not in (None, "custom"):
                raise TranslationError(f"server tool '{t.get('type')}' cannot be sent to {upstream} upstream",
                                       param="tools")  # fmt: skip
            fn = {"name": t.get("name", ""), "parameters": t.get("input_schema") or {"type": "object"}}
            if t.get("description"):
                fn["description"] = t["description"]
            out["tools"].append({"type": "function", "function": fn})
    choice = body.get("tool_choice")
    if choice:
        kind = choice.get("type")
        out["tool_choice"] = {
            "auto": "auto",
            "any": "required",
            "none": "none",
        }.get(kind) or {"type": "function", "function": {"name": choice.get("name", "")}}
        if choice.get("disable_parallel_tool_use") and tools:
            out["parallel_tool_calls"] = False
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# ---- OpenAI client → Anthropic upstream -----------------------------------------------

_CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                "top_k", "stop", "stream", "stream_options", "user", "tools", "tool_choice",
                "parallel_tool_calls", "n", "response_format"}  # fmt: skip


def _anthropic_image(part: dict[str, Any]) -> dict[str, Any]:
    url = (part.get("image_url") or {}).get("url", "")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";")[0] or "image/png"
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def chat_to_messages(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI Chat Completions request as an Anthropic Messages request."""
    upstream = "an Anthropic"
    for key, value in body.items():
        if key not in _CHAT_FIELDS and value not in (None, False):
            raise _refuse(key, upstream)
    if body.get("n") not in (None, 1):
        raise _refuse("n", upstream)
    if body.get("response_format") not in (None, {"type": "text"}):
        raise _refuse("response_format", upstream)
    system: list[str] = []
    msgs: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"].extend(blocks)
        else:
            msgs.append({"role": role, "content": blocks})

    for m in body.get("messages") or []:
        role, content = m.get("role"), m.get("content")
        if role in ("system", "developer"):
            system.append(_text_of_blocks(content))
        elif role == "user":
            if isinstance(content, str):
                add("user", [{"type": "text", "text": content}])
            else:
                blocks = []
                for part in content or []:
                    if part.get("type") == "text":
                        blocks.append({"type": "text", "text": part.get("text", "")})
                    elif part.get("type") == "image_url":
                        blocks.append(_anthropic_image(part))
                    else:
                        raise TranslationError(f"'{part.get('type')}' parts cannot be sent to an Anthropic upstream",
                                               param="messages")  # fmt: skip
                add("user", blocks)
        elif role == "assistant":
            blocks = []
            text = _text_of_blocks(content)
            if text:
                blocks.append({"type": "text", "text": text})
            for call in m.get("tool_calls") or []:
                fn = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": fn.get("name", ""),
                               "input": _args(fn.get("arguments"))})  # fmt: skip
            if blocks:
                add("assistant", blocks)
        elif role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": m.get("tool_call_id") or "",
                          "content": _text_of_blocks(content)}])  # fmt: skip
    out: dict[str, Any] = {
        "model": model,
        "messages": msgs,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or p.DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = "\n\n".join(s for s in system if s)
    temperature = body.get("temperature")
    if temperature is not None:
        if temperature > 1:
            raise TranslationError("temperature above 1 cannot be sent to an Anthropic upstream",
                                   param="temperature")  # fmt: skip
        out["temperature"] = temperature
    for key in ("top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if tools:
        out["tools"] = []
        for t in tools:
            if t.get("type", "function") != "function":
                raise TranslationError(f"'{t.get('type')}' tools cannot be sent to an Anthropic upstream",
                                       param="tools")  # fmt: skip
            fn = t.get("function") or {}
            tool = {"name": fn.get("name", ""),
                    "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}  # fmt: skip
            if fn.get("description"):
                tool["description"] = fn["description"]
            out["tools"].append(tool)
    choice = body.get("tool_choice")
    tc: dict[str, Any] | None = None
    if isinstance(choice, str):
        tc = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}.get(choice)
        if tc is None:
            raise TranslationError(f"tool_choice '{choice[:20]}' is not known", param="tool_choice")
    elif isinstance(choice, dict):
        tc = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    if body.get("parallel_tool_calls") is False and tools:
        tc = {**(tc or {"type": "auto"}), "disable_parallel_tool_use": True}
    if tc is not None and (tools or tc["type"] == "none"):
        out["tool_choice"] = tc
    if body.get("stream"):
        out["stream"] = True
    return out


# ---- upstream answers → neutral events --------------------------------------------------------


def _output(**fields: Any) -> p.Output:
    return p.Output(request_id="", completion_tokens=fields.pop("completion_tokens", 0), text=fields.pop("text", ""),
                    **fields)  # fmt: skip


def message_id(upstream_id: str | None) -> str:
    """An OpenAI upstream's answer id as an Anthropic message id."""
    return "msg_" + (upstream_id or uuid.uuid4().hex).removeprefix("chatcmpl-")


def chat_id(upstream_id: str | None) -> str:
    """An Anthropic upstream's message id as an OpenAI chat completion id."""
    return "chatcmpl-" + (upstream_id or uuid.uuid4().hex).removeprefix("msg_")


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "tool_calls", "content_filter") else "stop"


def chat_outputs(resp: dict[str, Any]) -> list[p.Output]:
    """An OpenAI chat completion as one final output."""
    choice = (resp.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    calls = [
        p.ToolCallDelta(i, tc.get("id") or f"call_{uuid.uuid4().hex[:24]}", (tc.get("function") or {}).get("name", ""),
                        (tc.get("function") or {}).get("arguments") or "{}")
        for i, tc in enumerate(msg.get("tool_calls") or [])
    ]  # fmt: skip
    prompt, completion, cached = tokens_of_openai_usage(resp.get("usage") or {})
    return [_output(text=msg.get("content") or "", reasoning=msg.get("reasoning_content") or "", tool_calls=calls,
                    finish_reason=_finish(choice.get("finish_reason")), prompt_tokens=prompt,
                    completion_tokens=completion, cached_tokens=cached)]  # fmt: skip


def message_outputs(msg: dict[str, Any]) -> list[p.Output]:
    """An Anthropic message as outputs in block order, the last one final."""
    outs: list[p.Output] = []
    calls = 0
    for b in msg.get("content") or []:
        kind = b.get("type")
        if kind == "text":
            outs.append(_output(text=b.get("text", "")))
        elif kind == "thinking":
            outs.append(_output(reasoning=b.get("thinking", "")))
        elif kind == "tool_use":
            call = p.ToolCallDelta(
                calls, b.get("id", ""), b.get("name", ""), json.dumps(b.get("input") or {})
            )
            outs.append(_output(tool_calls=[call]))
            calls += 1
    prompt, completion, cached = tokens_of_anthropic_usage(msg.get("usage") or {})
    outs.append(_output(finish_reason=_TO_OPENAI_FINISH.get(msg.get("stop_reason") or "end_turn", "stop"),
                        stop_sequence=msg.get("stop_sequence"), prompt_tokens=prompt, completion_tokens=completion,
                        cached_tokens=cached))  # fmt: skip
    return outs


class ChatChunkDecoder:
    """An OpenAI upstream's chat.completion.chunk events as outputs; the final one comes with
    `end()` (after the usage chunk that follows the finish reason)."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}

    def feed(self, chunk: dict[str, Any]) -> list[p.Output]:
        if chunk.get("error"):
            err = chunk["error"]
            message = err.get("message", "upstream error") if isinstance(err, dict) else str(err)
            raise UpstreamStreamError(f"upstream: {message}")
        self.id = self.id or chunk.get("id")
        self.model = self.model or chunk.get("model")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        outs: list[p.Output] = []
        for choice in (chunk.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            calls = []
            for tc in delta.get("tool_calls") or []:
                fn = tc.get("function") or {}
                calls.append(p.ToolCallDelta(int(tc.get("index") or 0), tc.get("id"),
                                             fn.get("name") if tc.get("id") else None, fn.get("arguments") or ""))  # fmt: skip
            text, reasoning = delta.get("content") or "", delta.get("reasoning_content") or ""
            if text or reasoning or calls:
                outs.append(_output(text=text, reasoning=reasoning, tool_calls=calls))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return outs

    def end(self) -> list[p.Output]:
        prompt, completion, cached = tokens_of_openai_usage(self.usage)
        return [_output(finish_reason=_finish(self.finish), prompt_tokens=prompt, completion_tokens=completion,
                        cached_tokens=cached)]  # fmt: skip


class MessageEventDecoder:
    """An Anthropic upstream's message events as outputs; `message_stop` gives the final one."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.tools: dict[int, int] = {}  # content block index → tool-call index
        self.usage: dict[str, Any] = {}
        self.stop: dict[str, Any] = {}
        self.done = False

    def feed(self, name: str, data: dict[str, Any]) -> list[p.Output]:
        kind = data.get("type") or name
        if kind == "message_start":
            msg = data.get("message") or {}
            self.id, self.model = msg.get("id"), msg.get("model")
            self.usage.update(msg.get("usage") or {})
            prompt, _, cached = tokens_of_anthropic_usage(self.usage)
            return [_output(prompt_tokens=prompt, cached_tokens=cached)]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                i = self.tools[data.get("index", 0)] = len(self.tools)
                return [
                    _output(tool_calls=[p.ToolCallDelta(i, block.get("id", ""), block.get("name", ""), "")])
                ]
            if block.get("type") == "text" and block.get("text"):
                return [_output(text=block["text"])]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            dt = delta.get("type")
            if dt == "text_delta" and delta.get("text"):
                return [_output(text=delta["text"])]
            if dt == "thinking_delta" and delta.get("thinking"):
                return [_output(reasoning=delta["thinking"])]
            if dt == "input_json_delta" and delta.get("partial_json"):
                i = self.tools.get(data.get("index", 0), 0)
                return [_output(tool_calls=[p.ToolCallDelta(i, None, None, delta["partial_json"])])]
            return []
        if kind == "message_delta":
            self.stop = data.get("delta") or {}
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            return []
        if kind == "message_stop":
            return self.end()
        if kind == "error":
            self.done = True
            err = data.get("error") or {}
            raise UpstreamStreamError(f"upstream: {err.get('message', 'upstream error')}")
        return []  # ping and unknown events

    def end(self) -> list[p.Output]:
        if self.done:
            return []
        self.done = True
        prompt, completion, cached = tokens_of_anthropic_usage(self.usage)
        reason = _TO_OPENAI_FINISH.get(self.stop.get("stop_reason") or "end_turn", "stop")
        return [_output(finish_reason=reason, stop_sequence=self.stop.get("stop_sequence"), prompt_tokens=prompt,
                        completion_tokens=completion, cached_tokens=cached)]  # fmt: skip
