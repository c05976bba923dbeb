"""Anthropic-compatible endpoints under /v1: `POST /v1/messages` and `/v1/messages/count_tokens`.

The routes hang off the `/v1` NinjaAPI (same auth: `x-api-key` or Bearer); its error
handlers call `owns()` and `error_response()` here, so errors on these paths come in
Anthropic's shape. `anthropic-version` and `anthropic-beta` headers are accepted and
not needed: there is one version of this surface.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import msgspec
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from ninja import Router

from inference import gateway, media
from inference import protocol as p
from inference.anthropic_schemas import CountTokensRequest, MessagesRequest
from inference.client import EngineDeadError, EngineRequestError, get_engine_client
from inference.dispatch import routed
from mlxmanager.audit.recorder import track_outputs
from mlxmanager.profiles.models import Profile

router = Router(tags=["anthropic"])
_json = msgspec.json.Encoder()

PATH = "/v1/messages"

# ---- errors: {"type": "error", "error": {"type": ..., "message": ...}} ------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
OVERLOADED = 529


async def _images(body: CountTokensRequest, target: gateway.Target) -> list[bytes]:
    """The request's images, checked (a 400 for a profile that takes none)."""
    gateway.require_kind(target, gateway.TEXT_KINDS, model=body.model)
    vision = target.profile.kind == Profile.KIND_VISION
    return await media.load_images(body.image_sources(), model=body.model, vision=vision)


def owns(request: HttpRequest) -> bool:
    """Whether an error on this request should be answered in Anthropic's shape."""
    path = request.path_info
    return path == PATH or path.startswith(PATH + "/")


def error_body(status: int, message: str) -> dict[str, Any]:
    type_ = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": type_, "message": message}}


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> HttpResponse:
    """An error in Anthropic's shape. The parameter, if any, leads the message (`max_tokens: …`)."""
    if code == p.ERR_OVERLOADED:
        status = OVERLOADED
    if param and param not in message:
        message = f"{param}: {message}"
    return HttpResponse(
        _json.encode(error_body(status, message)), status=status, content_type="application/json"
    )


def _stream_error(exc: EngineDeadError | EngineRequestError) -> bytes:
    if isinstance(exc, EngineRequestError):
        status = {p.ERR_BAD_REQUEST: 400, p.ERR_OVERLOADED: OVERLOADED}.get(exc.code, 500)
    else:
        status = 503
    return _event("error", error_body(status, str(exc)))


# ---- responses -----------------------------------------------------------------------


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (name.encode(), _json.encode(data))


_PING = _event("ping", {"type": "ping"})
_MESSAGE_STOP = _event("message_stop", {"type": "message_stop"})
_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"%b","%b":%b}}\n\n'
# Per block type: the empty block that opens it, and its delta's type and field.
_BLOCKS: dict[str, tuple[dict[str, Any], bytes, bytes]] = {
    "text": ({"type": "text", "text": ""}, b"text_delta", b"text"),
    "thinking": ({"type": "thinking", "thinking": "", "signature": ""}, b"thinking_delta", b"thinking"),
    "tool_use": ({"type": "tool_use", "input": {}}, b"input_json_delta", b"partial_json"),
}


def _tool_use_id(call_id: str | None) -> str:
    return "toolu_" + (call_id or "").removeprefix("call_")


def _tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as `input`; {} when generation stopped inside them."""
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class _Blocks:
    """Turns the worker's outputs into content blocks, in the order they were generated."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None

    def _open(self, kind: str, **fields: Any) -> list[bytes]:
        events = self.close()
        self.index += 1
        self.kind = kind
        block = {**_BLOCKS[kind][0], **fields}
        events.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )
        return events

    def _delta(self, value: str) -> bytes:
        assert self.kind is not None
        _, delta_type, field = _BLOCKS[self.kind]
        return _DELTA % (self.index, delta_type, field, _json.encode(value))

    def close(self) -> list[bytes]:
        if self.kind is None:
            return []
        self.kind = None
        return [_event("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def feed(self, out: p.Output) -> list[bytes]:
        events: list[bytes] = []
        for kind, value in (("thinking", out.reasoning), ("text", out.text)):
            if value:
                if self.kind != kind:
                    events += self._open(kind)
                events.append(self._delta(value))
        for tc in out.tool_calls:
            if tc.id is not None:
                events += self._open("tool_use", id=_tool_use_id(tc.id), name=tc.name)
            if tc.arguments and self.kind == "tool_use":
                events.append(self._delta(tc.arguments))
        return events

    def finish(self) -> list[bytes]:
        """Close the last block; an answer without any gets one empty text block."""
        return (self._open("text") if self.index < 0 else []) + self.close()


def _content(outputs: list[p.Output]) -> list[dict[str, Any]]:
    """The content blocks of a whole answer (non-streaming)."""
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
                blocks.append({"type": "tool_use", "id": _tool_use_id(tc.id), "name": tc.name, "input": {}})
                args[len(blocks) - 1] = []
            if tc.arguments and args:
                args[max(args)].append(tc.arguments)
    for i, pieces in args.items():
        blocks[i]["input"] = _tool_input("".join(pieces))
    return blocks or [{"type": "text", "text": ""}]


def _usage(out: p.Output, output_tokens: int) -> dict[str, int]:
    # Anthropic counts cache reads apart: input + cache_read + cache_creation = the whole prompt.
    return {
        "input_tokens": out.prompt_tokens - out.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": out.cached_tokens,
        "output_tokens": output_tokens,
    }


def _stop(final: p.Output) -> dict[str, Any]:
    if final.finish_reason == "length":
        reason = "max_tokens"
    elif final.finish_reason == "tool_calls":
        reason = "tool_use"
    elif final.stop_sequence is not None:
        reason = "stop_sequence"
    else:
        reason = "end_turn"
    return {"stop_reason": reason, "stop_sequence": final.stop_sequence}


def _message(
    req: p.Generate, content: list[dict[str, Any]], usage: dict[str, int], **stop: Any
) -> dict[str, Any]:
    return {
        "id": req.request_id,
        "type": "message",
        "role": "assistant",
        "model": req.model.name,
        "content": content,
        "stop_reason": stop.get("stop_reason"),
        "stop_sequence": stop.get("stop_sequence"),
        "usage": usage,
    }


async def _collect(
    req: p.Generate, first: list[p.Output], outputs: AsyncGenerator[list[p.Output], None]
) -> HttpResponse:
    collected = list(first)
    final = first[-1]
    async with aclosing(outputs):
        while final.finish_reason is None:
            batch = await outputs.__anext__()
            collected.extend(batch)
            final = batch[-1]
    body = _message(req, _content(collected), _usage(final, final.completion_tokens), **_stop(final))
    return HttpResponse(_json.encode(body), content_type="application/json")


async def _events(
    req: p.Generate, first: list[p.Output], outputs: AsyncGenerator[list[p.Output], None]
) -> AsyncIterator[bytes]:
    """Anthropic's event sequence; closing it early (client gone) aborts the worker request."""
    async with aclosing(outputs):
        start = _message(req, [], _usage(first[0], 0))
        yield _event("message_start", {"type": "message_start", "message": start})
        blocks = _Blocks()
        pinged = False
        batch = first
        try:
            while True:
                for out in batch:
                    for event in blocks.feed(out):
                        yield event
                        if not pinged:  # after the first block starts, as Anthropic does
                            yield _PING
                            pinged = True
                final = batch[-1]
                if final.finish_reason is not None:
                    break
                batch = await outputs.__anext__()
        except (EngineDeadError, EngineRequestError) as exc:
            yield _stream_error(exc)
            return
        for event in blocks.finish():
            yield event
            if not pinged:
                yield _PING
                pinged = True
        delta = {
            "type": "message_delta",
            "delta": _stop(final),
            "usage": _usage(final, final.completion_tokens),
        }
        yield _event("message_delta", delta)
        yield _MESSAGE_STOP


async def _generate(req: p.Generate, *, stream: bool) -> HttpResponseBase:
    outputs = track_outputs(get_engine_client().generate(req))
    try:
        # Wait for the worker's first answer, so setup errors still get a proper status.
        first = await outputs.__anext__()
    except BaseException:
        await outputs.aclose()
        raise
    if not stream:
        return await _collect(req, first, outputs)
    response = StreamingHttpResponse(_events(req, first, outputs), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


# ---- routes --------------------------------------------------------------------------


@router.post("/messages")
@routed("messages")
async def messages(request: HttpRequest, body: MessagesRequest) -> HttpResponseBase:
    body.refuse_unsupported()
    target = await gateway.resolve(body.model)
    images = await _images(body, target)
    return await _generate(gateway.messages_request(body, target, images), stream=body.stream)


@router.post("/messages/count_tokens")
@routed("count_tokens")
async def count_tokens(request: HttpRequest, body: CountTokensRequest) -> HttpResponse:
    body.refuse_unsupported()
    target = await gateway.resolve(body.model)
    images = await _images(body, target)
    count = await get_engine_client().count_tokens(gateway.count_tokens_request(body, target, images))
    return HttpResponse(_json.encode({"input_tokens": count}), content_type="application/json")
