"""Routing rules applied to /v1 requests, with the fallback chain.

`@routed(surface)` wraps a /v1 route. The requested model is matched against the enabled
rules (cached, no query per request); no match keeps today's behaviour (the local profile
of that name). A matching rule's targets are tried in order: a local profile runs the
wrapped route itself with `model` pointing at that profile; a credential goes through
`inference.upstream`. The next target is tried on connection errors, timeouts, 5xx, 429,
an open circuit, a refused credential (401/403), local overload (worker `overloaded` / model load failure / worker down)
and a missing local profile, all before the first byte reaches the client. Other errors
(a 400 from the client's own request) are answered at once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import msgspec
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from inference import upstream
from inference.client import EngineDeadError, EngineRequestError
from inference.protocol import ERR_MODEL_LOAD, ERR_OVERLOADED
from mlxmanager.accounts import limits
from mlxmanager.audit import recorder as rec
from mlxmanager.errors import DomainError
from mlxmanager.rules.selectors import Route, RouteTarget, route_for

log = logging.getLogger(__name__)
_decode = msgspec.json.Decoder()

View = Callable[..., Awaitable[HttpResponseBase]]
LOCAL_FALLBACK_CODES = {ERR_OVERLOADED, ERR_MODEL_LOAD}


def _is_fallback(exc: BaseException) -> bool:
    if isinstance(exc, upstream.UpstreamFailure | EngineDeadError | TimeoutError):
        return True
    if isinstance(exc, EngineRequestError):
        return exc.code in LOCAL_FALLBACK_CODES
    # A local target whose profile doesn't exist (or is disabled).
    return isinstance(exc, DomainError) and exc.status == 404 and exc.param == "model"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, upstream.UpstreamFailure):
        return exc.kind
    if isinstance(exc, EngineRequestError):
        return exc.code
    if isinstance(exc, EngineDeadError):
        return "worker_unavailable"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "model_not_found"


def routed(surface: str) -> Callable[[View], View]:
    """Apply routing rules to a /v1 route taking `(request, body)` (surface: "chat",
    "completions", "messages", "count_tokens" or "responses")."""

    def decorate(view: View) -> View:
        @wraps(view)
        async def wrapper(request: HttpRequest, body: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:
            audit = rec.current()
            requested = body.model
            if audit is not None:
                audit.requested_model = requested
                audit.stream = bool(getattr(body, "stream", False))
            limits.check_model(getattr(request, "api_key", None), requested)
            route = await route_for(requested)
            if route is None:
                if audit is not None:
                    audit.backend = f"local:{requested}"
                    audit.attempts = 1
                return await view(request, body, *args, **kwargs)
            return await _serve(request, body, surface, route, view, args, kwargs, audit)

        # ninja reads the signature (string annotations) with the *wrapper's* globals: give it
        # the resolved one.
        wrapper.__signature__ = inspect.signature(view, eval_str=True)  # type: ignore[attr-defined]
        return wrapper

    return decorate


async def _local(view: View, request: HttpRequest, body: Any, target: RouteTarget, timeout: float,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> HttpResponseBase:  # fmt: skip
    requested = body.model
    body.model = target.profile
    try:
        async with asyncio.timeout(timeout):
            return await view(request, body, *args, **kwargs)
    finally:
        body.model = requested


async def _serve(
    request: HttpRequest,
    body: Any,
    surface: str,
    route: Route,
    view: View,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    audit: rec.RequestAudit | None,
) -> HttpResponseBase:
    requested = body.model
    timeout = route.timeout_s or settings.MLXM_UPSTREAM_TIMEOUT
    raw: dict[str, Any] | None = None
    failures: list[tuple[str, BaseException]] = []
    if audit is not None:
        audit.rule = route.rule_name
    for target in route.targets:
        if target.unavailable:
            failures.append((target.label, upstream.UpstreamFailure(
                f"{target.label}: {target.unavailable}", kind="unavailable", status=503)))  # fmt: skip
            continue
        if surface == "responses" and target.upstream is not None and target.upstream.protocol != "openai":
            # The Responses API is relayed to OpenAI-style upstreams only (no translation to Anthropic's).
            failures.append((target.label, upstream.UpstreamFailure(
                f"{target.label}: Anthropic upstreams do not serve /v1/responses", kind="no_responses_api",
                status=503)))  # fmt: skip
            continue
        if audit is not None:
            audit.attempts += 1
            audit.backend = target.label
            audit.upstream_model = (
                target.profile if target.kind == "local" else target.upstream_model(requested)
            )
        try:
            if target.kind == "local":
                return await _local(view, request, body, target, timeout, args, kwargs)
            assert target.upstream is not None
            if raw is None:
                raw = _decode.decode(request.body)
            return await upstream.serve(
                target.upstream,
                surface=surface,
                body=raw,
                model=target.upstream_model(requested),
                client_headers=_forwarded_headers(request),
                timeout=timeout,
                audit=audit,
            )
        except upstream.UpstreamRejected as exc:
            return _rejected(request, exc)
        except Exception as exc:
            if not _is_fallback(exc):
                raise
            failures.append((target.label, exc))
            log.warning(
                "rule %s: %s failed (%s); trying the next target", route.rule_name, target.label, _reason(exc)
            )
    return _exhausted(request, requested, route, failures)


_FORWARDED = (("anthropic-version", "HTTP_ANTHROPIC_VERSION"), ("anthropic-beta", "HTTP_ANTHROPIC_BETA"))


def _forwarded_headers(request: HttpRequest) -> dict[str, str]:
    """The client headers an upstream call may pass on (`upstream._headers`), read from META:
    `request.headers` would build a dict of every header on the hot path."""
    meta = request.META
    return {name: meta[key] for name, key in _FORWARDED if key in meta}


def _error(request: HttpRequest, status: int, message: str, *, type_: str, code: str | None) -> HttpResponse:
    from inference.api.openai import _error as surface_error  # the one place that shapes /v1 errors

    return surface_error(request, status, message, type_=type_, code=code)


def _rejected(request: HttpRequest, exc: upstream.UpstreamRejected) -> HttpResponse:
    """The upstream refused the request: same protocol → its body as is; otherwise re-shaped."""
    from inference.api import anthropic

    client_protocol = "anthropic" if anthropic.owns(request) else "openai"
    if client_protocol == exc.protocol and exc.body:
        return HttpResponse(exc.body, status=exc.status, content_type="application/json")
    type_ = "invalid_request_error" if exc.status < 500 else "server_error"
    return _error(request, exc.status, f"upstream: {exc.message}", type_=type_, code="upstream_error")


def _exhausted(
    request: HttpRequest, requested: str, route: Route, failures: list[tuple[str, BaseException]]
) -> HttpResponseBase:
    """Every target failed: answer with the last failure (local errors keep their own mapping)."""
    if not failures:
        return _error(request, 503, f"rule '{route.rule_name}' has no targets", type_="server_error",
                      code="no_backend")  # fmt: skip
    label, last = failures[-1]
    if not isinstance(last, upstream.UpstreamFailure | TimeoutError):
        raise last
    tried = ", ".join(f"{lbl} ({_reason(exc)})" for lbl, exc in failures)
    if isinstance(last, TimeoutError):
        status, kind = 504, "timeout"
    else:
        status, kind = last.status, last.kind
        if kind in ("circuit_open", "unavailable"):
            status = 503
        elif kind == "upstream_error" and status not in (502, 503, 504):
            status = 502
    audit = rec.current()
    if audit is not None:
        audit.error_type = kind
    message = f"no backend could serve '{requested}' (rule '{route.rule_name}'; tried {tried})"
    code = "rate_limited" if kind == "rate_limited" else "upstream_unavailable"
    return _error(
        request, status, message, type_="server_error" if status != 429 else "rate_limit_error", code=code
    )
