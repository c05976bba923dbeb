"""Request limits at the ASGI edge, before Django reads a byte of the body.

Django's ASGI handler reads a whole request body (spooling it to a temporary file past 2.5 MB)
before any middleware or view runs, and only a view reading `request.body` ever compares it
with `DATA_UPLOAD_MAX_MEMORY_SIZE`. `RequestLimits` wraps the HTTP application instead:

- a `Content-Length` over the limit is answered 413 at once, from the headers alone;
- a body without one (chunked) is counted as it arrives: 413 as soon as the count passes;
- the next piece of a body must arrive within `MLXM_BODY_READ_TIMEOUT` seconds (408);
- a `/v1/` request with no API key header at all (neither `Authorization: Bearer` nor
  `x-api-key`) is answered 401 before its body is read. Whether the key is valid is still the
  app's business (`inference/api/openai.py`).

Answers come in the error shape of the surface asked: OpenAI's on `/v1/`, Anthropic's on
`/v1/messages`, RFC 7807 problem+json on `/api/`, plain text elsewhere; each closes the
connection (the unread body is not drained). `/v1/` refusals still get their audit row.

The head itself (request line and headers: size and time) is bounded by the web server:
`mlxmanager/http_protocol.py` for uvicorn, `mlxmanager/daphne_server.py` for daphne, which also
applies these checks while Twisted reads the body (daphne hands a request to the app only
once its whole body has arrived). This module imports no Django at import time, for the latter.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any

Message = dict[str, Any]
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

V1_PREFIX = "/v1/"
# /v1 paths that need no key: the gateway's OpenAPI document.
V1_PUBLIC = frozenset({"/v1/openapi.json"})
ANTHROPIC_PATH = "/v1/messages"
API_PREFIX = "/api/"

# status: (OpenAI `code`, Anthropic error `type`, message)
_REFUSALS = {
    401: (
        "invalid_api_key",
        "authentication_error",
        "Missing or invalid API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key'.",
    ),
    408: ("request_timeout", "invalid_request_error", "The request body was not sent in time."),
    413: ("request_too_large", "request_too_large", "The request body is too large."),
}


def refusal(path: str, status: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a refusal (401, 408 or 413) in `path`'s error shape."""
    code, anthropic_type, message = _REFUSALS[status]
    request_id = uuid.uuid4().hex  # these answers are /v1 and /api answers too: they get an id
    if path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/"):
        content_type = b"application/json"
        body = json.dumps(
            {"type": "error", "error": {"type": anthropic_type, "message": message}, "request_id": request_id}
        )
    elif path.startswith(V1_PREFIX):
        content_type = b"application/json"
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code,
                 "request_id": request_id}  # fmt: skip
        body = json.dumps({"error": error})
    elif path.startswith(API_PREFIX):
        content_type = b"application/problem+json"
        title = HTTPStatus(status).phrase
        body = json.dumps(
            {"type": "about:blank", "title": title, "status": status, "detail": message, "instance": path}
        )
    else:
        content_type = b"text/plain; charset=utf-8"
        body = message
    raw = body.encode()
    headers = [
        (b"x-request-id", request_id.encode()),
        (b"content-type", content_type),
        (b"content-length", str(len(raw)).encode()),
        (b"connection", b"close"),
    ]
    return headers, raw


def check_head(path: str, headers: Iterable[tuple[bytes, bytes]], *, max_body: int | None) -> int | None:
    """The status to refuse a request with from its head alone (lower-case header names), or None."""
    declared: bytes | None = None
    has_key = preflight = False
    for name, value in headers:
        if name == b"content-length":
            declared = value
        elif name == b"access-control-request-method":
            preflight = True  # a browser's CORS preflight carries no key: the app answers it
        elif name == b"authorization":
            has_key = has_key or (value[:7].lower() == b"bearer " and bool(value[7:].strip()))
        elif name == b"x-api-key":
            has_key = has_key or bool(value.strip())
    if path.startswith(V1_PREFIX) and not has_key and not preflight and path not in V1_PUBLIC:
        return 401
    if max_body is not None and declared is not None:
        try:
            if int(declared) > max_body:
                return 413
        except ValueError:
            pass  # the web server refuses a malformed Content-Length itself
    return None


def _audit_refusal(scope: dict[str, Any], status: int) -> None:
    """The audit row of a `/v1/` request refused here, as the audit middleware would write it."""
    from mlxmanager.audit import recorder as rec

    client = scope.get("client") or (None, None)
    audit = rec.RequestAudit(endpoint=scope["path"], client_ip=(client[0] or None) and str(client[0])[:45])
    if audit.finish(status, _REFUSALS[status][0]):
        rec.record(audit)


class _Guarded:
    """One request's receive, with its body counted and timed. The app's `send` is not wrapped
    (a call less per streamed chunk): the checks act only while the body is still arriving,
    and the applications behind this (Django's ASGI handlers) read all of it before they
    answer, so nothing has been sent when a refusal goes out."""

    __slots__ = ("scope", "_receive", "_send", "limit", "timeout", "received", "body_done")

    def __init__(
        self, scope: dict[str, Any], receive: Any, send: Any, limit: int | None, timeout: float | None
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.limit = limit
        self.timeout = timeout
        self.received = 0
        self.body_done = False

    async def refuse(self, status: int) -> None:
        self.body_done = True
        if self.scope["path"].startswith(V1_PREFIX):
            _audit_refusal(self.scope, status)
        headers, body = refusal(self.scope["path"], status)
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    async def receive(self) -> Message:
        if self.body_done:  # the body is in: this is the app watching for a disconnect
            return await self._receive()  # type: ignore[no-any-return]
        message: Message
        if self.timeout is None:
            message = await self._receive()
        else:
            try:
                async with asyncio.timeout(self.timeout):
                    message = await self._receive()
            except TimeoutError:
                await self.refuse(408)
                return {"type": "http.disconnect"}  # Django's handler stops reading and answers nothing
        if message["type"] != "http.request":
            self.body_done = True
            return message
        self.received += len(message.get("body", b""))
        if self.limit is not None and self.received > self.limit:
            await self.refuse(413)
            return {"type": "http.disconnect"}
        if not message.get("more_body", False):
            self.body_done = True
        return message


class RequestLimits:
    """ASGI middleware for HTTP; other scope types pass through untouched."""

    def __init__(
        self, app: ASGIApp, *, max_body: int | None = None, read_timeout: float | None = None
    ) -> None:
        from django.conf import settings

        self.app = app
        self.max_body: int | None = max_body if max_body is not None else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        timeout = read_timeout if read_timeout is not None else settings.MLXM_BODY_READ_TIMEOUT
        self.read_timeout = timeout if timeout and timeout > 0 else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = _Guarded(scope, receive, send, self.max_body, self.read_timeout)
        status = check_head(scope["path"], scope["headers"], max_body=self.max_body)
        if status is not None:
            await guard.refuse(status)
            return
        await self.app(scope, guard.receive, send)
