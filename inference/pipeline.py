"""One request pipeline for every surface.

    surface schema ─► Call ─► serve(call): limits ─► rules + fallbacks ─► local worker | cloud
                                                                        ─► Stream | Relayed | result
    surface encoder (inference.encoders) ◄─ neutral events

Each surface (OpenAI chat and completions, Anthropic messages and count_tokens, Responses,
embeddings, audio, the playground's WebSocket) parses its schema into a `Call` and encodes
what `serve` returns. Limits, routing rules, fallbacks and the audit record live here only.

Fallback: a rule's targets are tried in order. The next one is tried on connection errors,
timeouts, 5xx, 429, an open circuit, a refused credential (401/403), local overload (worker
`overloaded` or `queue_full`, a model that failed to load, the worker down) and a missing local profile, all
before the first byte reaches the client. Other errors (the client's own 400) end the call.

With tracing on, each step is a span of the request's trace (mlxmanager/tracing.py): the
route, each attempt ("local" or "upstream"), and a local answer's queue_wait, prefill, decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from django.conf import settings

from inference import gateway, media, upstream
from inference import protocol as p
from inference.client import EngineDeadError, EngineRequestError
from inference.events import Stream
from inference.fleet import get_engine_client
from mlxmanager import tracing
from mlxmanager.accounts import limits
from mlxmanager.audit import recorder as rec
from mlxmanager.errors import DomainError
from mlxmanager.rules.selectors import Route, RouteTarget, route_for
from mlxmanager.usage import budgets

log = logging.getLogger(__name__)
_decode = msgspec.json.Decoder()

# Surfaces whose requests follow routing rules (the others are served by local profiles only).
ROUTED = frozenset({"chat", "completions", "messages", "count_tokens", "responses", "ws"})
# Which protocol a surface's client speaks (a same-protocol upstream is relayed as is).
CLIENT_PROTOCOL = {"chat": "openai", "completions": "openai", "messages": "anthropic",
                   "count_tokens": "anthropic", "responses": "responses", "ws": "ws"}  # fmt: skip
LOCAL_FALLBACK_CODES = {p.ERR_OVERLOADED, p.ERR_MODEL_LOAD, p.ERR_QUEUE_FULL}


@dataclass(kw_only=True)
class Call:
    """One request, whatever surface it came from."""

    surface: str
    model: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    stream: bool = False
    # Text surfaces: what to generate (None for embeddings and audio, whose local step is theirs).
    # (or what builds it, called only if a local profile serves the call)
    prompt: gateway.Prompt | Callable[[], gateway.Prompt] | None = None
    kinds: tuple[str, ...] = gateway.TEXT_KINDS
    # The client's JSON body (relayed to a cloud upstream, translated if needed): given, or
    # decoded from `body_bytes` when a cloud target is first tried.
    raw: dict[str, Any] | None = None
    body_bytes: bytes | None = None
    client_headers: dict[str, str] = field(default_factory=dict)
    key: Any = None  # the ApiKey, for API clients
    user: Any = None  # the signed-in user, for the playground
    audit: rec.RequestAudit | None = None


@dataclass
class Count:
    """count_tokens' answer."""

    input_tokens: int


# What `serve` returns: a `Stream`, an `upstream.Relayed`, a `Count`, or a local step's own result.
Answer = Any
LocalStep = Callable[[Call, gateway.Target], Awaitable[Any]]


async def serve(call: Call, local: LocalStep | None = None) -> Answer:
    """Serve one call: limits (the key's, checked at auth; the model; the user's) → rules and
    fallbacks → local worker or cloud upstream.

    `local` serves a local profile for surfaces with their own worker request (embeddings,
    audio); text surfaces use the generation step here. A `Stream` is returned once its first
    events are in, so failures before then still get a proper status (and a fallback)."""
    audit = call.audit
    if audit is not None:
        audit.requested_model = call.model
        audit.stream = call.stream
    tr = tracing.current()  # None unless tracing is on (mlxmanager/tracing.py)
    if tr is not None:
        tr.begin(call.surface, call.model)
    limits.check_model(call.key, call.model)
    # The user's own limits cover all their traffic: every key and the playground.
    user_id = call.key.user_id if call.key is not None else getattr(call.user, "pk", None)
    await limits.check_user(user_id)
    # Budgets (tokens per day/month, spend per month) of the key and the user: 429 budget_exceeded.
    await budgets.check(call.key.pk if call.key is not None else None, user_id)
    step = local or _local_text
    if tr is not None:
        tr.begin_route()
    route = await route_for(call.model) if call.surface in ROUTED else None
    if route is None:
        if audit is not None:
            audit.backend = f"local:{call.model}"
            audit.attempts = 1
        if tr is not None:
            run = functools.partial(_direct, call, step)
            return await tr.attempt("local", f"local:{call.model}", {"mlxm.profile": call.model}, run)
        return await _direct(call, step)
    return await _follow(call, route, step)


async def _direct(call: Call, step: LocalStep) -> Answer:
    from mlxmanager.sitesettings.selectors import value

    limit = value("local_timeout")  # the Settings page's, else MLXM_LOCAL_TIMEOUT; None: no limit
    if not limit:
        return await step(call, await gateway.resolve(call.model))
    try:
        async with asyncio.timeout(float(limit)):
            return await step(call, await gateway.resolve(call.model))
    except TimeoutError as exc:
        raise Exhausted(
            f"The local model did not start answering within {float(limit):g} s", status=504, code="timeout"
        ) from exc


# ---- the local step ---------------------------------------------------------------------------


async def _local_text(call: Call, target: gateway.Target) -> Answer:
    prompt = call.prompt() if callable(call.prompt) else call.prompt
    assert prompt is not None
    gateway.require_kind(target, call.kinds, model=call.model)
    from mlxmanager.profiles.models import Profile

    vision = target.profile.kind == Profile.KIND_VISION
    images = await media.load_images(prompt.image_sources, model=call.model, vision=vision)
    rid = gateway.worker_id(prompt.id_prefix)
    client = get_engine_client()
    if call.surface == "count_tokens":
        return Count(await client.count_tokens(gateway.count_request(prompt, target, images, request_id=rid)))
    who = gateway.requester(call.key, call.user)
    req = gateway.worker_request(prompt, target, images, request_id=rid, who=who)
    generated = client.generate(req)
    tr = tracing.current()
    if tr is not None:  # the worker's timings: queue_wait, prefill and decode spans
        generated = tr.local_outputs(generated)
    outputs = rec.track_outputs(generated, call.audit)
    try:
        first = await outputs.__anext__()
    except BaseException:
        await outputs.aclose()
        raise
    return Stream(id=rid, model=target.profile.name, first=first, rest=outputs, request=req)


# ---- rules and fallbacks ------------------------------------------------------------------------


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


class Exhausted(DomainError):
    """Every target of a rule failed."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message, code=code)
        self.status = status


async def _attempt(call: Call, target: RouteTarget, timeout: float, step: LocalStep) -> Answer:
    if target.kind == "local":
        async with asyncio.timeout(timeout):
            return await step(call, await gateway.resolve(target.profile))
    assert target.upstream is not None
    if call.raw is None and call.body_bytes is not None:
        with contextlib.suppress(msgspec.DecodeError):
            decoded = _decode.decode(call.body_bytes)
            call.raw = decoded if isinstance(decoded, dict) else None
    if call.raw is None:
        raise DomainError("this request cannot be sent to a cloud upstream", param="model")
    return await upstream.serve(
        target.upstream,
        surface=call.surface,
        client=CLIENT_PROTOCOL.get(call.surface, "openai"),
        body=call.raw,
        model=target.upstream_model(call.model),
        client_headers=call.client_headers,
        timeout=timeout,
        audit=call.audit,
        request_id=call.request_id,
    )


async def _follow(call: Call, route: Route, step: LocalStep) -> Answer:
    audit = call.audit
    timeout = route.timeout_s or settings.MLXM_UPSTREAM_TIMEOUT
    failures: list[tuple[str, BaseException]] = []
    if audit is not None:
        audit.rule = route.rule_name
    tr = tracing.current()
    if tr is not None:
        tr.rule(route.rule_name)
    for target in route.targets:
        if target.unavailable:
            failures.append((target.label, upstream.UpstreamFailure(
                f"{target.label}: {target.unavailable}", kind="unavailable", status=503)))  # fmt: skip
            if tr is not None:
                tr.skipped(target.label, target.unavailable)
            continue
        if (
            call.surface == "responses"
            and target.upstream is not None
            and target.upstream.protocol != "openai"
        ):
            # The Responses API is relayed to OpenAI-style upstreams only (no translation to Anthropic's).
            failures.append((target.label, upstream.UpstreamFailure(
                f"{target.label}: Anthropic upstreams do not serve /v1/responses", kind="no_responses_api",
                status=503)))  # fmt: skip
            if tr is not None:
                tr.skipped(target.label, "no_responses_api")
            continue
        if audit is not None:
            audit.attempts += 1
            audit.backend = target.label
            audit.upstream_model = (
                target.profile if target.kind == "local" else target.upstream_model(call.model)
            )
        try:
            if tr is None:
                return await _attempt(call, target, timeout, step)
            run = functools.partial(_attempt, call, target, timeout, step)
            return await tr.attempt(*_traced(call, target), run)
        except Exception as exc:
            if not _is_fallback(exc):
                raise
            failures.append((target.label, exc))
            log.warning(
                "rule %s: %s failed (%s); trying the next target", route.rule_name, target.label, _reason(exc)
            )
    raise _exhausted(call, route, failures)


def _traced(call: Call, target: RouteTarget) -> tuple[str, str, dict[str, Any]]:
    """An attempt's span: its name, its target's label, its attributes (no secrets)."""
    if target.kind == "local":
        return "local", target.label, {"mlxm.profile": target.profile}
    assert target.upstream is not None
    cfg = target.upstream
    attrs = {"mlxm.credential": cfg.name, "mlxm.provider": cfg.provider,
             "mlxm.upstream_model": target.upstream_model(call.model)}  # fmt: skip
    return "upstream", target.label, attrs


def _exhausted(call: Call, route: Route, failures: list[tuple[str, BaseException]]) -> BaseException:
    """Every target failed: the last failure (local errors keep their own mapping)."""
    if not failures:
        return Exhausted(f"rule '{route.rule_name}' has no targets", status=503, code="no_backend")
    _, last = failures[-1]
    if not isinstance(last, upstream.UpstreamFailure | TimeoutError):
        return last
    tried = ", ".join(f"{label} ({_reason(exc)})" for label, exc in failures)
    if isinstance(last, TimeoutError):
        status, kind = 504, "timeout"
    else:
        status, kind = last.status, last.kind
        if kind in ("circuit_open", "unavailable"):
            status = 503
        elif kind == "upstream_error" and status not in (502, 503, 504):
            status = 502
    if call.audit is not None:
        call.audit.error_type = kind
    message = f"no backend could serve '{call.model}' (rule '{route.rule_name}'; tried {tried})"
    return Exhausted(
        message, status=status, code="rate_limited" if kind == "rate_limited" else "upstream_unavailable"
    )
