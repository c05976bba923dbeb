"""Anthropic-compatible endpoints under /v1: `POST /v1/messages` and `/v1/messages/count_tokens`.

The routes hang off the `/v1` NinjaAPI (same auth: `x-api-key` or Bearer); its error
handlers call `owns()` and `error_response()` here, so errors on these paths come in
Anthropic's shape. `anthropic-version` and `anthropic-beta` headers are accepted and
not needed: there is one version of this surface.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import msgspec
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from ninja import Router

from inference import gateway
from inference import protocol as p
from inference.anthropic_schemas import CountTokensRequest, MessagesRequest
from inference.client import EngineDeadError, EngineRequestError, get_engine_client

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
_BLOCK_START = _event(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
_BLOCK_STOP = _event("content_block_stop", {"type": "content_block_stop", "index": 0})
_MESSAGE_STOP = _event("message_stop", {"type": "message_stop"})
_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":%b}}\n\n'


def _text_delta(text: str) -> bytes:
    return _DELTA % _json.encode(text)


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
    parts = [o.text for o in first]
    final = first[-1]
    async with aclosing(outputs):
        while final.finish_reason is None:
            batch = await outputs.__anext__()
            parts.extend(o.text for o in batch)
            final = batch[-1]
    text = "".join(parts)
    body = _message(
        req, [{"type": "text", "text": text}], _usage(final, final.completion_tokens), **_stop(final)
    )
    return HttpResponse(_json.encode(body), content_type="application/json")


async def _events(
    req: p.Generate, first: list[p.Output], outputs: AsyncGenerator[list[p.Output], None]
) -> AsyncIterator[bytes]:
    """Anthropic's event sequence; closing it early (client gone) aborts the worker request."""
    async with aclosing(outputs):
        start = _message(req, [], _usage(first[0], 0))
        yield _event("message_start", {"type": "message_start", "message": start})
        yield _BLOCK_START
        yield _PING
        batch = first
        try:
            while True:
                text = "".join(o.text for o in batch)
                if text:
                    yield _text_delta(text)
                final = batch[-1]
                if final.finish_reason is not None:
                    break
                batch = await outputs.__anext__()
        except (EngineDeadError, EngineRequestError) as exc:
            yield _stream_error(exc)
            return
        yield _BLOCK_STOP
        delta = {
            "type": "message_delta",
            "delta": _stop(final),
            "usage": _usage(final, final.completion_tokens),
        }
        yield _event("message_delta", delta)
        yield _MESSAGE_STOP


async def _generate(req: p.Generate, *, stream: bool) -> HttpResponseBase:
    outputs = get_engine_client().generate(req)
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
async def messages(request: HttpRequest, body: MessagesRequest) -> HttpResponseBase:
    body.refuse_unsupported()
    target = await gateway.resolve(body.model)
    return await _generate(gateway.messages_request(body, target), stream=body.stream)


@router.post("/messages/count_tokens")
async def count_tokens(request: HttpRequest, body: CountTokensRequest) -> HttpResponse:
    body.refuse_unsupported()
    target = await gateway.resolve(body.model)
    count = await get_engine_client().count_tokens(gateway.count_tokens_request(body, target))
    return HttpResponse(_json.encode({"input_tokens": count}), content_type="application/json")
