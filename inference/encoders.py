"""Every byte the gateway and the dashboard stream, written here: the SSE writer, one encoder
per API (OpenAI chat and completions, Anthropic messages, Responses, the playground's
WebSocket JSON), and one error renderer per API shape, used before and during a stream.

Encoders read neutral events (`inference.events.Stream`): a local answer and a translated
cloud answer go through the same code. Closing an encoder's stream early (the client went
away) closes the `Stream`, which aborts the request in the worker or the upstream call.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from typing import Any

import msgspec
from django.http import HttpResponse, StreamingHttpResponse

from inference import protocol as p
from inference.events import Failure, Stream, failure_of, unexpected

_json = msgspec.json.Encoder()

# ---- the SSE writer -------------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"


def frame(data: dict[str, Any] | bytes, *, event: str | None = None) -> bytes:
    """One server-sent event carrying JSON (`data` pre-encoded or a dict)."""
    body = data if isinstance(data, bytes) else _json.encode(data)
    if event is None:
        return b"data: " + body + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + body + b"\n\n"


def html_frame(event: str, html: str) -> bytes:
    """One event carrying an HTML fragment (htmx's SSE extension swaps it in): a data line each."""
    data = "".join(f"data: {line}\n" for line in html.strip().splitlines() or [""])
    return f"event: {event}\n{data}\n".encode()


def retry_frame(ms: int) -> bytes:
    return b"retry: %d\n\n" % ms


KEEPALIVE = b": keep-alive\n\n"


def event_stream(
    events: AsyncIterator[bytes], *, headers: dict[str, str] | None = None
) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: don't buffer the stream
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def json_response(body: dict[str, Any], *, status: int = 200) -> HttpResponse:
    return HttpResponse(_json.encode(body), status=status, content_type="application/json")


# ---- errors, one renderer per API shape -------------------------------------------------------

OPENAI, ANTHROPIC = "openai", "anthropic"
ANTHROPIC_OVERLOADED = 529
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    ANTHROPIC_OVERLOADED: "overloaded_error"}  # fmt: skip


def openai_error(f: Failure, request_id: str = "") -> dict[str, Any]:
    err: dict[str, Any] = {"message": f.message, "type": f.type_, "param": f.param, "code": f.code}
    if request_id:
        err["request_id"] = request_id
    return {"error": err}


def anthropic_status(f: Failure) -> int:
    return ANTHROPIC_OVERLOADED if f.code == p.ERR_OVERLOADED else f.status


def anthropic_error(f: Failure, request_id: str = "") -> dict[str, Any]:
    """Anthropic's shape; the parameter, if any, leads the message (`max_tokens: …`)."""
    status = anthropic_status(f)
    type_ = _ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    message = f"{f.param}: {f.message}" if f.param and f.param not in f.message else f.message
    body: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
    if f.code == "budget_exceeded":  # a clear code next to Anthropic's own type
        body["error"]["code"] = f.code
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(shape: str, f: Failure, request_id: str = "") -> HttpResponse:
    if shape == ANTHROPIC:
        response = json_response(anthropic_error(f, request_id), status=anthropic_status(f))
    else:
        response = json_response(openai_error(f, request_id), status=f.status)
    if f.retry_after is not None:
        response["Retry-After"] = str(f.retry_after)
    return response


RESPONSES = "responses"


def stream_error(shape: str, f: Failure, request_id: str = "") -> bytes:
    """The event that ends a stream which failed after its first byte (OpenAI's then [DONE])."""
    if shape == ANTHROPIC:
        return frame(anthropic_error(f, request_id), event="error")
    if shape == RESPONSES:
        return frame({"type": "error", "code": f.code, "message": f.message, "param": None}, event="error")
    return frame(openai_error(f, request_id)) + DONE


def _stream_failure(exc: BaseException) -> Failure:
    return failure_of(exc) or unexpected()


# ---- OpenAI: chat completions and completions ----------------------------------------------------


def openai_usage(final: p.Output) -> dict[str, Any]:
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": final.prompt_tokens + final.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": final.cached_tokens},
    }


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


class _Logprobs:
    """Per-token log-probabilities in the chat shape (`content: [...]`) or the legacy
    completions shape (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`)."""

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.offset = 0

    def payload(self, items: list[p.TokenLogprob]) -> dict[str, Any]:
        if self.chat:
            content = [
                {"token": t.token, "logprob": t.logprob, "bytes": _bytes(t.token),
                 "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": _bytes(a.token)}
                                  for a in t.top]}
                for t in items
            ]  # fmt: skip
            return {"content": content, "refusal": None}
        offsets = []
        for t in items:
            offsets.append(self.offset)
            self.offset += len(t.token)
        return {
            "tokens": [t.token for t in items],
            "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [{a.token: a.logprob for a in t.top} for t in items],
            "text_offset": offsets,
        }


class _Collected:
    """A whole answer gathered from its batches (non-streamed answers)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: list[p.TokenLogprob] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.final: p.Output | None = None

    def add(self, batch: list[p.Output]) -> None:
        for out in batch:
            self.parts.append(out.text)
            if out.logprobs:
                self.logprobs.extend(out.logprobs)
            if out.reasoning:
                self.reasoning.append(out.reasoning)
            for tc in out.tool_calls:
                call = self.calls.setdefault(
                    tc.index,
                    {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": ""}},
                )
                call["function"]["arguments"] += tc.arguments
            if out.finish_reason is not None:
                self.final = out

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def message(self) -> dict[str, Any]:
        """The assistant message: content (null when it only called tools), reasoning, calls."""
        text = self.text
        msg: dict[str, Any] = {"role": "assistant", "content": text if text or not self.calls else None}
        msg["refusal"] = None
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            msg["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return msg


async def _gather(stream: Stream) -> _Collected:
    collected = _Collected()
    async with aclosing(stream.batches()) as batches:
        async for batch in batches:
            collected.add(batch)
    await stream.aclose()
    assert collected.final is not None
    return collected


def _chat_deltas(batch: list[p.Output]) -> list[dict[str, Any]]:
    """The deltas of one batch that carries reasoning or tool calls, in generation order;
    argument pieces of one call are joined."""
    deltas: list[dict[str, Any]] = []
    for out in batch:
        if out.reasoning:
            if deltas and "reasoning_content" in deltas[-1]:
                deltas[-1]["reasoning_content"] += out.reasoning
            else:
                deltas.append({"reasoning_content": out.reasoning})
        if out.text:
            if deltas and "content" in deltas[-1]:
                deltas[-1]["content"] += out.text
            else:
                deltas.append({"content": out.text})
        for tc in out.tool_calls:
            last = deltas[-1]["tool_calls"][-1] if deltas and "tool_calls" in deltas[-1] else None
            if tc.id is None and last is not None and last["index"] == tc.index:
                last["function"]["arguments"] += tc.arguments
                continue
            item: dict[str, Any] = {"index": tc.index, "function": {"arguments": tc.arguments}}
            if tc.id is not None:
                item = {"index": tc.index, "id": tc.id, "type": "function",
                        "function": {"name": tc.name, "arguments": tc.arguments}}  # fmt: skip
            if deltas and "tool_calls" in deltas[-1]:
                deltas[-1]["tool_calls"].append(item)
            else:
                deltas.append({"tool_calls": [item]})
    return deltas


class _Chunks:
    """Pre-encodes the constant parts of a chunk so each token costs one small encode."""

    def __init__(self, *, rid: str, model: str, created: int, chat: bool) -> None:
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created, "model": model}  # fmt: skip
        self.head = b"data: " + _json.encode(head)[:-1]
        self.chat = chat

    def content(self, text: str) -> bytes:
        if self.chat:
            return (
                b'%b,"choices":[{"index":0,"delta":{"content":%b},"logprobs":null,"finish_reason":null}]}\n\n'
                % (self.head, _json.encode(text))
            )  # noqa: E501
        return b'%b,"choices":[{"index":0,"text":%b,"logprobs":null,"finish_reason":null}]}\n\n' % (
            self.head,
            _json.encode(text),
        )  # noqa: E501

    def event(self, **fields: Any) -> bytes:
        return self.head + b"," + _json.encode(fields)[1:] + b"\n\n"

    def logprob_chunks(self, lp: _Logprobs, batch: list[p.Output]) -> list[bytes]:
        """A batch's chunks with its tokens' log-probabilities on the first one (an empty delta
        carries them when the batch produced no visible text, e.g. a held-back stop string)."""
        tokens = [t for out in batch for t in out.logprobs or ()]
        choices: list[dict[str, Any]]
        if self.chat:
            choices = [
                {"index": 0, "delta": d, "logprobs": None, "finish_reason": None} for d in _chat_deltas(batch)
            ]
        else:
            text = "".join(o.text for o in batch)
            choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}] if text else []
        if tokens:
            if not choices:
                empty: dict[str, Any] = {"delta": {}} if self.chat else {"text": ""}
                choices = [{"index": 0, **empty, "logprobs": None, "finish_reason": None}]
            choices[0]["logprobs"] = lp.payload(tokens)
        return [self.event(choices=[c]) for c in choices]


async def openai_whole(stream: Stream, *, chat: bool, logprobs: bool = False, echo: str = "") -> HttpResponse:
    """A chat completion or text completion object (non-streamed)."""
    collected = await _gather(stream)
    final = collected.final
    assert final is not None
    lp = _Logprobs(chat=chat).payload(collected.logprobs) if logprobs else None
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": collected.message(), "logprobs": lp,
                                  "finish_reason": final.finish_reason}  # fmt: skip
    else:
        choice = {
            "index": 0,
            "text": echo + collected.text,
            "logprobs": lp,
            "finish_reason": final.finish_reason,
        }
    body = {"id": stream.id, "object": "chat.completion" if chat else "text_completion", "created": stream.created,
            "model": stream.model, "choices": [choice], "usage": openai_usage(final),
            "system_fingerprint": None}  # fmt: skip
    return json_response(body)


async def openai_events(
    stream: Stream,
    *,
    chat: bool,
    include_usage: bool,
    logprobs: bool = False,
    echo: str = "",
    request_id: str = "",
) -> AsyncIterator[bytes]:
    """OpenAI's chunk sequence, ending with `data: [DONE]` (an error chunk before it on failure)."""
    chunks = _Chunks(rid=stream.id, model=stream.model, created=stream.created, chat=chat)
    lp = _Logprobs(chat=chat)
    try:
        if chat:
            yield chunks.event(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}])  # fmt: skip
        elif echo:
            yield chunks.content(echo)
        try:
            async for batch in stream.batches():
                if logprobs:  # slow path: each chunk carries the log-probabilities of its tokens
                    for event in chunks.logprob_chunks(lp, batch):
                        yield event
                elif chat and any(o.reasoning or o.tool_calls for o in batch):
                    for delta in _chat_deltas(batch):
                        yield chunks.event(choices=[{"index": 0, "delta": delta, "logprobs": None,
                                                     "finish_reason": None}])  # fmt: skip
                elif text := "".join(o.text for o in batch):
                    yield chunks.content(text)
                final = batch[-1] if batch and batch[-1].finish_reason else None
                if final is not None:
                    end: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
                    yield chunks.event(choices=[{"index": 0, **end, "logprobs": None,
                                                 "finish_reason": final.finish_reason}])  # fmt: skip
                    if include_usage:
                        yield chunks.event(choices=[], usage=openai_usage(final))
        except Exception as exc:
            yield frame(openai_error(_stream_failure(exc), request_id))
        yield DONE
    finally:
        await stream.aclose()


# ---- Anthropic: messages --------------------------------------------------------------------------

_PING = frame({"type": "ping"}, event="ping")
_MESSAGE_STOP = frame({"type": "message_stop"}, event="message_stop")
_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"%b","%b":%b}}\n\n'
# Per block type: the empty block that opens it, and its delta's type and field.
_BLOCKS: dict[str, tuple[dict[str, Any], bytes, bytes]] = {
    "text": ({"type": "text", "text": ""}, b"text_delta", b"text"),
    "thinking": ({"type": "thinking", "thinking": "", "signature": ""}, b"thinking_delta", b"thinking"),
    "tool_use": ({"type": "tool_use", "input": {}}, b"input_json_delta", b"partial_json"),
}
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def tool_use_id(call_id: str | None) -> str:
    """The worker's `call_…` ids as Anthropic's `toolu_…`; other ids (an upstream's) as they are."""
    call_id = call_id or ""
    return "toolu_" + call_id[5:] if call_id.startswith("call_") or not call_id else call_id


def _tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as `input`; {} when generation stopped inside them."""
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class _Blocks:
    """Turns outputs into content blocks' events, in the order they were generated."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None

    def _open(self, kind: str, **fields: Any) -> list[bytes]:
        events = self.close()
        self.index += 1
        self.kind = kind
        block = {**_BLOCKS[kind][0], **fields}
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        events.append(frame(start, event="content_block_start"))
        return events

    def _delta(self, value: str) -> bytes:
        assert self.kind is not None
        _, delta_type, field = _BLOCKS[self.kind]
        return _DELTA % (self.index, delta_type, field, _json.encode(value))

    def close(self) -> list[bytes]:
        if self.kind is None:
            return []
        self.kind = None
        return [frame({"type": "content_block_stop", "index": self.index}, event="content_block_stop")]

    def feed(self, out: p.Output) -> list[bytes]:
        events: list[bytes] = []
        for kind, value in (("thinking", out.reasoning), ("text", out.text)):
            if value:
                if self.kind != kind:
                    events += self._open(kind)
                events.append(self._delta(value))
        for tc in out.tool_calls:
            if tc.id is not None:
                events += self._open("tool_use", id=tool_use_id(tc.id), name=tc.name)
            if tc.arguments and self.kind == "tool_use":
                events.append(self._delta(tc.arguments))
        return events

    def finish(self) -> list[bytes]:
        """Close the last block; an answer without any gets one empty text block."""
        return (self._open("text") if self.index < 0 else []) + self.close()


def _content(outputs: Iterable[p.Output]) -> list[dict[str, Any]]:
    """The content blocks of a whole answer (non-streamed)."""
    blocks: list[dict[str, Any]] = []
    args: dict[int, list[str]] = {}
    for out in outputs:
        for kind, value in (("thinking", out.reasoning), ("text", out.text)):
            if value:
                if not blocks or blocks[-1]["type"] != kind:
                    blocks.append(dict(_BLOCKS[kind][0]))
                blocks[-1][kind] += value
        for tc in out.tool_calls:
            if tc.id is not None:
                blocks.append({"type": "tool_use", "id": tool_use_id(tc.id), "name": tc.name, "input": {}})
                args[len(blocks) - 1] = []
            if tc.arguments and args:
                args[max(args)].append(tc.arguments)
    for i, pieces in args.items():
        blocks[i]["input"] = _tool_input("".join(pieces))
    return blocks or [{"type": "text", "text": ""}]


def anthropic_usage(out: p.Output, output_tokens: int) -> dict[str, int]:
    # Anthropic counts cache reads apart: input + cache_read + cache_creation = the whole prompt.
    return {
        "input_tokens": max(out.prompt_tokens - out.cached_tokens, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": out.cached_tokens,
        "output_tokens": output_tokens,
    }


def _stop(final: p.Output) -> dict[str, Any]:
    if final.stop_sequence is not None:
        reason = "stop_sequence"
    else:
        reason = _STOP_REASONS.get(final.finish_reason or "", "end_turn")
    return {"stop_reason": reason, "stop_sequence": final.stop_sequence}


def _message(
    stream: Stream, content: list[dict[str, Any]], usage: dict[str, int], **stop: Any
) -> dict[str, Any]:
    return {"id": stream.id, "type": "message", "role": "assistant", "model": stream.model, "content": content,
            "stop_reason": stop.get("stop_reason"), "stop_sequence": stop.get("stop_sequence"),
            "usage": usage}  # fmt: skip


async def anthropic_whole(stream: Stream) -> HttpResponse:
    outputs: list[p.Output] = []
    async with aclosing(stream.batches()) as batches:
        async for batch in batches:
            outputs.extend(batch)
    await stream.aclose()
    final = outputs[-1]
    body = _message(
        stream, _content(outputs), anthropic_usage(final, final.completion_tokens), **_stop(final)
    )
    return json_response(body)


async def anthropic_events(stream: Stream, *, request_id: str = "") -> AsyncIterator[bytes]:
    """Anthropic's event sequence (message_start … message_stop; an error event on failure)."""
    try:
        head = stream.first[0] if stream.first else p.Output(request_id="", text="", completion_tokens=0)
        start = _message(stream, [], anthropic_usage(head, 0))
        yield frame({"type": "message_start", "message": start}, event="message_start")
        blocks = _Blocks()
        pinged = False
        final: p.Output | None = None
        try:
            async for batch in stream.batches():
                for out in batch:
                    for event in blocks.feed(out):
                        yield event
                        if not pinged:  # after the first block starts, as Anthropic does
                            yield _PING
                            pinged = True
                if batch and batch[-1].finish_reason is not None:
                    final = batch[-1]
        except Exception as exc:
            yield frame(anthropic_error(_stream_failure(exc), request_id), event="error")
            return
        if final is None:
            return
        for event in blocks.finish():
            yield event
            if not pinged:
                yield _PING
                pinged = True
        delta = {
            "type": "message_delta",
            "delta": _stop(final),
            "usage": anthropic_usage(final, final.completion_tokens),
        }
        yield frame(delta, event="message_delta")
        yield _MESSAGE_STOP
    finally:
        await stream.aclose()


# ---- OpenAI Responses -------------------------------------------------------------------------


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesBuilder:
    """Output items and (when `stream`) the events that build them, in generation order
    (`response.created` … `response.completed`, each with its `sequence_number`). The same
    builder makes the non-streamed answer, so both agree."""

    def __init__(self, stream_: Stream, request: dict[str, Any], *, stream: bool) -> None:
        """`request` echoes what was asked: instructions, max_output_tokens, reasoning, text,
        tools, tool_choice, parallel_tool_calls, temperature, top_p, user, metadata."""
        self.stream = stream
        self.seq = 0
        self.items: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being generated
        self.reasoning_tokens = 0
        self.tokens_seen = 0
        self.response: dict[str, Any] = {
            "id": stream_.id, "object": "response", "created_at": stream_.created, "status": "in_progress",
            "background": False, "error": None, "incomplete_details": None,
            "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
            "max_tool_calls": None, "model": stream_.model, "output": [],
            "parallel_tool_calls": request.get("parallel_tool_calls", True), "previous_response_id": None,
            "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
            "service_tier": "default", "store": False, "temperature": request.get("temperature"),
            "text": request.get("text"), "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [], "top_logprobs": 0, "top_p": request.get("top_p"),
            "truncation": "disabled", "usage": None, "user": request.get("user"),
            "metadata": request.get("metadata") or {},
        }  # fmt: skip

    def _event(self, type_: str, **fields: Any) -> list[bytes]:
        if not self.stream:
            return []
        data = {"type": type_, **fields, "sequence_number": self.seq}
        self.seq += 1
        return [frame(data, event=type_)]

    def start(self) -> list[bytes]:
        snapshot = dict(self.response)
        return self._event("response.created", response=snapshot) + self._event(
            "response.in_progress", response=snapshot
        )

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.items)}

    def _open(self, item: dict[str, Any]) -> list[bytes]:
        events = self.close()
        self.open = item
        shown = {k: v for k, v in item.items() if not k.startswith("_")}
        events += self._event("response.output_item.added", output_index=len(self.items), item=shown)
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events += self._event("response.content_part.added", **self._where(), content_index=0, part=part)
        elif item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": ""}
            events += self._event("response.content_part.added", **self._where(), content_index=0, part=part)
        return events

    def close(self, status: str = "completed") -> list[bytes]:
        """Finish the open item: its `done` events, and it joins the output."""
        item = self.open
        if item is None:
            return []
        events: list[bytes] = []
        where = self._where()
        kind = item["type"]
        if kind == "message":
            text = "".join(item.pop("_text"))
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            events += self._event(
                "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
            )
            events += self._event("response.content_part.done", **where, content_index=0, part=part)
        elif kind == "reasoning":
            text = "".join(item.pop("_text"))
            part = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            events += self._event("response.reasoning_text.done", **where, content_index=0, text=text)
            events += self._event("response.content_part.done", **where, content_index=0, part=part)
        else:
            item["arguments"] = "".join(item.pop("_text"))
            events += self._event("response.function_call_arguments.done", **where, name=item["name"],
                                  arguments=item["arguments"])  # fmt: skip
        item["status"] = status
        events += self._event("response.output_item.done", output_index=len(self.items), item=item)
        self.items.append(item)
        self.open = None
        return events

    def _append(self, kind: str, value: str) -> list[bytes]:
        events: list[bytes] = []
        if self.open is None or self.open["type"] != kind:
            if kind == "message":
                item = {"id": _item_id("msg"), "type": "message", "status": "in_progress",
                        "role": "assistant", "content": []}  # fmt: skip
            else:
                item = {"id": _item_id("rs"), "type": "reasoning", "status": "in_progress",
                        "summary": [], "content": []}  # fmt: skip
            events += self._open({**item, "_text": []})
        assert self.open is not None
        self.open["_text"].append(value)
        where = self._where()
        if kind == "message":
            events += self._event(
                "response.output_text.delta", **where, content_index=0, delta=value, logprobs=[]
            )
        else:
            events += self._event("response.reasoning_text.delta", **where, content_index=0, delta=value)
        return events

    def feed(self, out: p.Output) -> list[bytes]:
        if out.reasoning and not out.text and not out.tool_calls:
            self.reasoning_tokens += out.completion_tokens - self.tokens_seen
        self.tokens_seen = out.completion_tokens
        events: list[bytes] = []
        if out.reasoning:
            events += self._append("reasoning", out.reasoning)
        if out.text:
            events += self._append("message", out.text)
        for tc in out.tool_calls:
            if tc.id is not None:
                item = {"id": _item_id("fc"), "type": "function_call", "status": "in_progress",
                        "call_id": tc.id, "name": tc.name or "", "arguments": ""}  # fmt: skip
                events += self._open({**item, "_text": []})
            if tc.arguments and self.open is not None and self.open["type"] == "function_call":
                self.open["_text"].append(tc.arguments)
                events += self._event(
                    "response.function_call_arguments.delta", **self._where(), delta=tc.arguments
                )
        return events

    def finish(self, final: p.Output) -> list[bytes]:
        incomplete = final.finish_reason == "length"
        events = self.close("incomplete" if incomplete else "completed")
        self.response.update(
            status="incomplete" if incomplete else "completed",
            incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
            output=self.items,
            usage={
                "input_tokens": final.prompt_tokens,
                "input_tokens_details": {"cached_tokens": final.cached_tokens, "cache_write_tokens": 0},
                "output_tokens": final.completion_tokens,
                "output_tokens_details": {
                    "reasoning_tokens": min(self.reasoning_tokens, final.completion_tokens)
                },
                "total_tokens": final.prompt_tokens + final.completion_tokens,
            },
        )
        if not incomplete:
            self.response["completed_at"] = int(time.time())
        name = "response.incomplete" if incomplete else "response.completed"
        return events + self._event(name, response=self.response)

    def failed(self, f: Failure) -> list[bytes]:
        events = self._event("error", code=f.code, message=f.message, param=None)
        self.response.update(status="failed", error={"code": "server_error", "message": f.message},
                             output=self.items)  # fmt: skip
        return events + self._event("response.failed", response=self.response)


async def responses_whole(stream: Stream, request: dict[str, Any]) -> HttpResponse:
    builder = ResponsesBuilder(stream, request, stream=False)
    final: p.Output | None = None
    async with aclosing(stream.batches()) as batches:
        async for batch in batches:
            for out in batch:
                builder.feed(out)
            final = batch[-1] if batch else final
    await stream.aclose()
    assert final is not None
    builder.finish(final)
    return json_response(builder.response)


async def responses_events(stream: Stream, request: dict[str, Any]) -> AsyncIterator[bytes]:
    builder = ResponsesBuilder(stream, request, stream=True)
    try:
        yield b"".join(builder.start())
        final: p.Output | None = None
        try:
            async for batch in stream.batches():
                chunk = b"".join(event for out in batch for event in builder.feed(out))
                if chunk:
                    yield chunk
                final = batch[-1] if batch else final
        except Exception as exc:
            yield b"".join(builder.failed(_stream_failure(exc)))
            return
        if final is not None:
            yield b"".join(builder.finish(final))
    finally:
        await stream.aclose()


# ---- the playground's WebSocket ------------------------------------------------------------------


def ws_error(rid: Any, f: Failure, request_id: str = "") -> dict[str, Any]:
    return {"type": "error", "id": rid, **openai_error(f, request_id)}


async def ws_messages(stream: Stream, rid: str) -> AsyncIterator[dict[str, Any]]:
    """`delta` messages as pieces arrive, then `done` with the usage (failures raise)."""
    async for batch in stream.batches():
        text = "".join(o.text for o in batch)
        reasoning = "".join(o.reasoning for o in batch)
        calls = [{"index": c.index, "id": c.id, "name": c.name, "arguments": c.arguments}
                 for o in batch for c in o.tool_calls]  # fmt: skip
        if text or reasoning or calls:
            delta: dict[str, Any] = {"type": "delta", "id": rid, "text": text}
            if reasoning:
                delta["reasoning"] = reasoning
            if calls:
                delta["tool_calls"] = calls
            yield delta
        if batch and batch[-1].finish_reason is not None:
            final = batch[-1]
            yield {
                "type": "done",
                "id": rid,
                "finish_reason": final.finish_reason,
                "usage": openai_usage(final),
            }
