"""OpenTelemetry traces of the gateway's requests: off unless the standard `OTEL_*` variables ask.

On when `OTEL_TRACES_EXPORTER` names `otlp` and/or `console`, or (exporter `otlp`) when an OTLP
endpoint is set: `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. Never
with `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`. The SDK reads the rest itself:
the OTLP exporter (http/protobuf) its endpoint, headers, timeout and compression, the batch
processor its `OTEL_BSP_*` limits, the provider `OTEL_TRACES_SAMPLER(_ARG)`, the resource
`OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` ("mlx-manager" when neither names it).
`setup()` runs once per process, in `mlxmanager/asgi.py`, before the middleware chains are built.

Off, it costs nothing: no OpenTelemetry module is imported, `tracing_middleware` leaves the
chains (`MiddlewareNotUsed`), `current()` is always None and each hook in the pipeline, the
upstream call and the chat socket is one `is None` (or `ENABLED`) test.

The spans of one request (docs/operations.md, "Traces"):

    POST /v1/chat/completions    the request (SERVER); "ws.chat" for a playground generation
    └─ route                     rule (blank: none matched), target that answered, attempts
       ├─ upstream               per cloud attempt: credential, upstream model, status or failure
       └─ local                  per local attempt: profile, finish reason, tokens
          ├─ queue_wait          sent to the worker → started there (scheduler, model load, a free row)
          ├─ prefill             → its first token (the worker's `queued_s`, `prefill_s`)
          └─ decode              first token → last token, as they reached this process

The request span, the route span and the attempt that answered end together, when the answer
has been sent (see `tracing_middleware` for why there); a failed attempt ends when it fails.
The local answer's three spans are made with explicit times once the worker's final output,
which carries its timings, has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

log = logging.getLogger(__name__)

SERVICE_NAME = "mlx-manager"
EXPORTERS = ("otlp", "console")
PREFIX = "/v1/"
UNKNOWN_ROUTE = "/v1/(unknown)"
CLIENT_CLOSED = 499

ENABLED = False  # set by setup(): read by the hooks, and by tracing_middleware when a chain is built
_tracer: Any = None  # the SDK's Tracer while ENABLED
_provider: Any = None
_api: Any = None  # the `opentelemetry.trace` module while ENABLED
_current: ContextVar[RequestTrace | None] = ContextVar("mlxm_trace", default=None)


def exporters_wanted(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters the environment asks for; none means tracing stays off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").lower().split(",") if n.strip()]
    if names:
        if "none" in names:
            return []
        for name in names:
            if name not in EXPORTERS:
                log.warning("OTEL_TRACES_EXPORTER: '%s' is not available here (only %s)", name, EXPORTERS)
        return [n for n in EXPORTERS if n in names]
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


def setup(exporter: Any = None, *, environ: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on if the environment asks for it (or `exporter` is given); True when on.

    `exporter` (tests: an `InMemorySpanExporter`) gets every span as it ends, whatever the
    environment says, and the process-wide tracer provider is left alone. Call `shutdown()`
    before setting up again."""
    global ENABLED, _tracer, _provider, _api
    if ENABLED:
        return True
    names = exporters_wanted(environ) if exporter is None else []
    if exporter is None and not names:
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER, OTEL_SPAN_*_LIMIT
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if "otlp" in names:
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        )
        if protocol and protocol != "http/protobuf":
            log.warning("OTLP protocol '%s' is not available here: traces go over http/protobuf", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_BSP_*
    if "console" in names:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    if exporter is None:
        trace.set_tracer_provider(provider)  # for any other OpenTelemetry-aware code in the process
    _provider, _api = provider, trace
    _tracer = provider.get_tracer("mlxmanager")
    ENABLED = True
    log.info("tracing on: %s", ", ".join(names) or type(exporter).__name__)
    return True


def shutdown() -> None:
    """Export what is still buffered and turn tracing off (the ASGI lifespan's shutdown: uvicorn
    skips `atexit`; tests)."""
    global ENABLED, _tracer, _provider
    provider, _provider = _provider, None
    ENABLED, _tracer = False, None
    if provider is not None:
        provider.shutdown()


def current() -> RequestTrace | None:
    """The trace of the request this task serves; always None while tracing is off."""
    return _current.get()


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the W3C `traceparent` (and `tracestate`) of the current attempt to an outgoing call."""
    tr = _current.get()
    if tr is not None:
        from opentelemetry import propagate

        propagate.inject(headers, context=_api.set_span_in_context(tr.attempt_span or tr.span))


def note(attributes: Mapping[str, Any]) -> None:
    """Attributes for the current attempt's span (e.g. the upstream's answer status)."""
    tr = _current.get()
    if tr is not None and tr.attempt_span is not None:
        tr.attempt_span.set_attributes(attributes)


def _failure(exc: BaseException) -> tuple[str, int | None]:
    """(kind, status) of a failed attempt, as the client and the audit row name it, read off
    the gateway's exceptions (`kind` of an upstream failure, `code` of a worker or domain
    error) without importing them."""
    status = getattr(exc, "status", None)
    status = status if isinstance(status, int) else None
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled", None
    if isinstance(exc, TimeoutError):
        return "timeout", status
    if type(exc).__name__ == "EngineDeadError":
        return "worker_unavailable", None
    if status == 404 and getattr(exc, "param", None) == "model":
        return "model_not_found", status
    kind = getattr(exc, "kind", None) or getattr(exc, "code", None) or type(exc).__name__
    return str(kind)[:64], status


class RequestTrace:
    """The spans of one request: its own, the route's, one per attempt, the local timings."""

    def __init__(self, name: str, attributes: Mapping[str, Any], parent: Any = None) -> None:
        self.span = _tracer.start_span(name, context=parent, kind=_api.SpanKind.SERVER, attributes=attributes)
        self.route: Any = None
        self.attempt_span: Any = None
        self.attempts = 0
        self._open: list[Any] = []  # ended with the request: the route, the attempt that answered
        self.done = False

    def _child(self, name: str, parent: Any, attributes: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        return _tracer.start_span(name, context=_api.set_span_in_context(parent), attributes=attributes, **kw)

    # ---- the pipeline ------------------------------------------------------------------

    def begin(self, surface: str, model: str) -> None:
        """`pipeline.serve` began: the request's surface and the model it asked for."""
        self.span.set_attributes({"mlxm.surface": surface, "mlxm.requested_model": model})

    def begin_route(self) -> None:
        """The limits passed: choosing a target (and trying it) begins."""
        if self.route is None:
            self.route = self._child("route", self.span, {"mlxm.rule": ""})
            self._open.append(self.route)

    def rule(self, name: str) -> None:
        if self.route is not None:
            self.route.set_attribute("mlxm.rule", name)

    def skipped(self, label: str, reason: str) -> None:
        """A target of the rule that was not tried (disabled credential, no Responses API...)."""
        if self.route is not None:
            self.route.add_event("target skipped", {"mlxm.target": label, "mlxm.reason": reason})

    async def attempt(
        self, kind: str, label: str, attributes: Mapping[str, Any], run: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Run one attempt (`kind`: "local" or "upstream") in its span. A failure ends the span
        with its kind; an answer leaves it open until the request ends."""
        self.attempts += 1
        span = self._child(kind, self.route or self.span, {"mlxm.target": label, **attributes})
        self.attempt_span = span
        try:
            answer = await run()
        except BaseException as exc:
            why, status = _failure(exc)
            span.set_attribute("mlxm.failure", why)
            if status is not None:
                span.set_attribute("mlxm.failure_status", status)
            span.set_status(_api.Status(_api.StatusCode.ERROR, f"{why}: {str(exc)[:200]}"))
            span.end()
            if self.route is not None:
                self.route.set_attribute("mlxm.attempts", self.attempts)
            raise
        self._open.append(span)
        if self.route is not None:
            self.route.set_attributes({"mlxm.target": label, "mlxm.attempts": self.attempts})
        return answer

    def local_outputs(self, outputs: AsyncGenerator[list[Any], None]) -> AsyncGenerator[list[Any], None]:
        """Watch a worker's output stream for the current local attempt's timings."""
        return _timed(self, self.attempt_span or self.span, outputs)

    def local_timings(self, span: Any, sent: int, first: int, last: int, final: Any) -> None:
        """queue_wait, prefill and decode under `span`, from the final output's timings (ns:
        `sent` to the worker; first and last token batches as they arrived here)."""
        span.set_attributes({
            "mlxm.finish_reason": final.finish_reason,
            "gen_ai.usage.input_tokens": final.prompt_tokens,
            "gen_ai.usage.output_tokens": final.completion_tokens,
            "mlxm.cached_tokens": final.cached_tokens,
        })  # fmt: skip
        queued, prefill = getattr(final, "queued_s", None), getattr(final, "prefill_s", None)
        if queued is not None:
            started = sent + int(queued * 1e9)
            self._interval("queue_wait", span, sent, started)
            if prefill is not None:
                attrs = {
                    "gen_ai.usage.input_tokens": final.prompt_tokens,
                    "mlxm.cached_tokens": final.cached_tokens,
                }
                self._interval("prefill", span, started, started + int(prefill * 1e9), attrs)
        if first:
            self._interval("decode", span, first, max(first, last),
                           {"gen_ai.usage.output_tokens": final.completion_tokens})  # fmt: skip

    def _interval(
        self, name: str, parent: Any, start: int, end: int, attrs: Mapping[str, Any] | None = None
    ) -> None:
        self._child(name, parent, attrs, start_time=start).end(end_time=end)

    # ---- the end ----------------------------------------------------------------------

    def end(self, status: int, error: str = "") -> None:
        """The answer was sent (or failed, or the client left): end every span still open."""
        if self.done:
            return
        self.done = True
        now = time.time_ns()
        for span in reversed(self._open):
            span.end(end_time=now)
        self.span.set_attribute("mlxm.status", status)
        if error:
            self.span.set_attribute("mlxm.error", error[:64])
        if status >= 500:
            self.span.set_status(_api.Status(_api.StatusCode.ERROR, error or str(status)))
        self.span.end(end_time=now)


async def _timed(
    tr: RequestTrace, span: Any, outputs: AsyncGenerator[list[Any], None]
) -> AsyncGenerator[list[Any], None]:
    sent = time.time_ns()  # the worker request goes out at the first read
    first = last = 0
    async with contextlib.aclosing(outputs):
        async for batch in outputs:
            if batch:
                tail = batch[-1]
                if tail.completion_tokens:
                    last = time.time_ns()
                    first = first or last
                if tail.finish_reason is not None:
                    tr.local_timings(span, sent, first, last, tail)
            yield batch


# ---- where a request's span begins and ends ------------------------------------------------------


def _parent(meta: Mapping[str, Any]) -> Any:
    """The client's trace context (W3C `traceparent`), if it sent one."""
    if "HTTP_TRACEPARENT" not in meta:
        return None
    from opentelemetry import propagate

    carrier = {"traceparent": meta["HTTP_TRACEPARENT"], "tracestate": meta.get("HTTP_TRACESTATE", "")}
    return propagate.extract(carrier)


def _route(request: HttpRequest) -> str:
    """The URL pattern the request matched (not the path the client chose)."""
    match = getattr(request, "resolver_match", None)
    if match is None or not match.url_name or not match.route:
        return UNKNOWN_ROUTE
    return "/" + str(match.route)


@sync_and_async_middleware
def tracing_middleware(get_response: Any) -> Any:
    """The request span of every /v1 request (first in the gateway's middleware chain).

    It ends here, when the response is done: at once for a whole body, and for a streamed
    one when its content ends (last chunk sent, client gone, or a failure), by wrapping the
    content as the audit middleware does. Not in the pipeline: `pipeline.serve` returns as
    soon as an answer has begun, and most of the answer is sent after it returned; and not
    in the audit middleware, so that neither depends on the other. Left out of the chain
    (`MiddlewareNotUsed`) while tracing is off, and for synchronous chains (no /v1 there)."""
    if not ENABLED or not asyncio.iscoroutinefunction(get_response):
        raise MiddlewareNotUsed
    from mlxmanager import request_ids

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        if not ENABLED or not request.path_info.startswith(PREFIX):
            return await get_response(request)  # type: ignore[no-any-return]
        method = str(request.method)
        attrs = {"mlxm.request_id": request_ids.of(request), "http.request.method": method}
        tr = RequestTrace(f"{method} /v1", attrs, parent=_parent(request.META))
        token = _current.set(tr)
        try:
            response = await get_response(request)
        except BaseException as exc:
            _who(tr, request, method)
            if isinstance(exc, asyncio.CancelledError):  # the client went away
                tr.end(CLIENT_CLOSED, "client_closed")
            else:
                tr.end(500, type(exc).__name__)
            raise
        finally:
            _current.reset(token)
        _who(tr, request, method)
        tr.span.set_attribute("http.response.status_code", response.status_code)
        if response.streaming:
            response.streaming_content = _watch(response.streaming_content, tr, response.status_code)  # type: ignore[attr-defined]
        else:
            tr.end(response.status_code)
        return response

    return middleware


def _who(tr: RequestTrace, request: HttpRequest, method: str) -> None:
    """The route as the span's name; who asked (never a secret: the key's prefix, its user)."""
    route = _route(request)
    tr.span.update_name(f"{method} {route}")
    tr.span.set_attribute("http.route", route)
    key = getattr(request, "api_key", None)
    if key is not None:
        tr.span.set_attributes({"mlxm.key_prefix": key.prefix, "mlxm.user_id": key.user_id})


async def _watch(content: AsyncIterator[bytes], tr: RequestTrace, status: int) -> AsyncIterator[bytes]:
    error = ""
    try:
        closing = contextlib.aclosing(content) if hasattr(content, "aclose") else contextlib.nullcontext()  # type: ignore[type-var]
        async with closing:  # type: ignore[attr-defined]
            async for chunk in content:
                yield chunk
    except (GeneratorExit, asyncio.CancelledError):
        status, error = CLIENT_CLOSED, "client_closed"
        raise
    except Exception as exc:
        error = type(exc).__name__
        raise
    finally:
        tr.end(status, error)


def begin_ws(request_id: str, user_id: Any) -> RequestTrace | None:
    """The request span of one playground generation ("ws.chat"), current in the calling task
    (the generation's own); the consumer ends it with the generation's status."""
    if not ENABLED:
        return None
    tr = RequestTrace("ws.chat", {"mlxm.request_id": request_id, "mlxm.user_id": user_id})
    _current.set(tr)
    return tr
