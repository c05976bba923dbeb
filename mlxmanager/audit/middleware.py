"""Opens the audit record of every /v1 request and closes it when the answer ends.

For streamed answers "ends" means the last chunk was sent, the client went away, or the
stream failed: the record is handed to the recorder (a buffer append) in every case. Other
requests only set the actor for model-level admin audit (`signals`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

from mlxmanager import request_ids
from mlxmanager.audit import recorder as rec
from mlxmanager.audit import signals

PREFIX = "/v1/"


def _client_ip(request: HttpRequest) -> str | None:
    # The web server runs with --proxy-headers: REMOTE_ADDR is already the forwarded client
    # when the peer is a trusted proxy (MLXM_FORWARDED_ALLOW_IPS).
    ip = request.META.get("REMOTE_ADDR") or None
    return ip[:45] if ip else None


def _error_type(response: HttpResponseBase) -> str:
    """`code` or `type` from an OpenAI- or Anthropic-shaped error body (errors only)."""
    try:
        body = json.loads(response.content)  # type: ignore[attr-defined]
        err = body.get("error") or {}
        return str(err.get("code") or err.get("type") or "")[:64]
    except Exception:
        return ""


def _model_from_body(request: HttpRequest) -> str:
    try:
        if request.content_type == "application/json" and len(request.body) <= 1_000_000:
            model = json.loads(request.body).get("model")
            return model[:256] if isinstance(model, str) else ""
    except Exception:  # any unreadable body: the row just lacks the model
        return ""
    return ""


UNKNOWN_ENDPOINT = "/v1/(unknown)"


def _who(request: HttpRequest, audit: rec.RequestAudit) -> None:
    key = getattr(request, "api_key", None)
    if key is not None:
        audit.api_key_id = key.pk
        audit.key_prefix = key.prefix
        audit.user_id = key.user_id
        audit.username = key.user.get_username()


def _anonymous(request: HttpRequest, audit: rec.RequestAudit) -> None:
    """A request no valid API key vouched for (a 401, or an unknown path without a key): anyone
    on the network can send those, so the row keeps no string the client chose (the model it
    named, or a made-up path), only what the server knows: when, from where, which endpoint,
    the status."""
    audit.requested_model = audit.rule = audit.backend = audit.upstream_model = ""
    match = getattr(request, "resolver_match", None)
    if match is None or not match.url_name:  # the /v1 catch-all (unknown paths) has no name
        audit.endpoint = UNKNOWN_ENDPOINT


async def _watch(content: AsyncIterator[bytes], audit: rec.RequestAudit, status: int) -> AsyncIterator[bytes]:
    error = ""
    try:
        async for chunk in content:
            if audit.first_token is None:
                audit.first_output()
            yield chunk
    except (GeneratorExit, asyncio.CancelledError):
        status, error = rec.CLIENT_CLOSED, "client_closed"
        raise
    except Exception as exc:
        error = type(exc).__name__
        raise
    finally:
        if audit.finish(status, error):
            rec.record(audit)


@sync_and_async_middleware
def audit_middleware(get_response: Any) -> Any:
    if not asyncio.iscoroutinefunction(get_response):

        def sync_middleware(request: HttpRequest) -> HttpResponseBase:
            token, via = signals.set_actor(getattr(request, "user", None)), signals.set_via("")
            try:
                return get_response(request)  # type: ignore[no-any-return]
            finally:
                signals.reset_actor(token)
                signals.reset_via(via)

        return sync_middleware

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        if not request.path_info.startswith(PREFIX):
            token, via = signals.set_actor(getattr(request, "user", None)), signals.set_via("")
            try:
                return await get_response(request)  # type: ignore[no-any-return]
            finally:
                signals.reset_actor(token)
                signals.reset_via(via)
        audit = rec.RequestAudit(
            endpoint=request.path_info, client_ip=_client_ip(request), request_id=request_ids.of(request)
        )
        request.audit = audit  # type: ignore[attr-defined]
        token = rec.activate(audit)
        try:
            response = await get_response(request)
        except BaseException:
            _who(request, audit)
            if audit.api_key_id is None:
                _anonymous(request, audit)
            if audit.finish(500, "internal"):
                rec.record(audit)
            raise
        finally:
            rec.deactivate(token)
        _who(request, audit)
        if audit.api_key_id is None:
            _anonymous(request, audit)
        elif response.status_code >= 400 and not audit.requested_model:
            audit.requested_model = _model_from_body(request)
        if response.streaming:
            response.streaming_content = _watch(response.streaming_content, audit, response.status_code)  # type: ignore[attr-defined]
        else:
            if audit.first_token is None and response.status_code < 400:
                audit.first_output()
            error = _error_type(response) if response.status_code >= 400 else ""
            if audit.finish(response.status_code, error):
                rec.record(audit)
        return response

    return middleware
