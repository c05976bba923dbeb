"""Calls to cloud (or self-hosted) upstreams: async aiohttp, streaming end to end.

- One pooled `aiohttp.ClientSession` per upstream credential and event loop. aiohttp, not
  httpx: its C HTTP parser costs ~1.4 ms less per proxied request on this machine, most of
  the gateway's 2 ms budget (`benchmarks/bench_proxy.py`, `docs/benchmarks.md`).
- Retries with exponential backoff (honouring a short `Retry-After`) on connection errors,
  timeouts, 429 and 5xx, and only before the first byte: once the upstream has answered
  2xx, its answer is relayed as it comes.
- A circuit breaker per upstream: after `MLXM_BREAKER_FAILURES` failed calls in a row it
  opens, and the upstream is skipped (the route falls back) for `MLXM_BREAKER_COOLDOWN`
  seconds; then one trial call decides whether it closes again.
- Same protocol: the client's body goes up with the upstream model name, and the upstream's
  events come back byte for byte. Otherwise `inference.translate` converts both ways.
- Every event is decoded once for the audit (first token time, token usage); prompts and
  answers are never logged. The credential's key only ever goes into request headers.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from inference import translate
from inference.sse import SSEDecoder
from mlxmanager.audit.recorder import RequestAudit
from mlxmanager.credentials.selectors import UpstreamConfig
from mlxmanager.errors import DomainError

log = logging.getLogger(__name__)
_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()

ANTHROPIC_VERSION = "2023-06-01"
MAX_RETRY_WAIT_S = 5.0


# ---- failures -------------------------------------------------------------------------


class UpstreamFailure(Exception):
    """The upstream could not serve this request; the route may fall back."""

    def __init__(
        self, message: str, *, kind: str, status: int = 502, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind  # connection_error, timeout, rate_limited, upstream_error, circuit_open, unavailable
        self.status = status
        self.retry_after = retry_after


class UpstreamRejected(Exception):
    """The upstream refused the request itself (4xx other than 429): the client's problem."""

    def __init__(self, status: int, message: str, body: bytes, protocol: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body
        self.protocol = protocol


def _error_message(body: bytes) -> str:
    try:
        data = _decode.decode(body)
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", "replace") or "no details"
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or "no details")[:500]
    return str(err or data)[:500]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(when.timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


# ---- circuit breaker ------------------------------------------------------------------


@dataclass
class Breaker:
    """closed → (N failures in a row) → open → (cooldown) → half-open: one trial call."""

    failures_to_open: int
    cooldown_s: float
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    trial_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self.clock()
        # One trial at a time; a trial that never reported (cancelled) expires after a cooldown.
        if self.trial_at is not None and now - self.trial_at < self.cooldown_s:
            return False
        self.trial_at = now
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = self.trial_at = None

    def failure(self) -> None:
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.failures_to_open:
            self.opened_at = self.clock()
            self.trial_at = None


_breakers: dict[int, Breaker] = {}


def breaker_for(cfg: UpstreamConfig) -> Breaker:
    b = _breakers.get(cfg.id)
    if b is None:
        b = _breakers[cfg.id] = Breaker(settings.MLXM_BREAKER_FAILURES, settings.MLXM_BREAKER_COOLDOWN)
    return b


def breaker_states() -> dict[int, str]:
    return {k: b.state for k, b in _breakers.items()}


# ---- HTTP -----------------------------------------------------------------------------

_sessions: dict[tuple[int, int], tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]] = {}


def session_for(cfg: UpstreamConfig) -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    key = (id(loop), cfg.id)
    entry = _sessions.get(key)
    if entry is None or entry[0] is not loop or entry[1].closed:
        connector = aiohttp.TCPConnector(limit=200, keepalive_timeout=60)
        entry = _sessions[key] = (loop, aiohttp.ClientSession(connector=connector, trust_env=False))
    return entry[1]


def _timeouts(timeout: float) -> aiohttp.ClientTimeout:
    """`timeout` for the first byte and for every later read (a stalled stream); connecting
    (a pooled connection included) gets at most 10 s of it."""
    connect = min(timeout, 10.0)
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=timeout)


@dataclass
class Call:
    """One upstream request, built from the client's request and the route's target."""

    cfg: UpstreamConfig
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    stream: bool
    mode: str  # "openai", "anthropic", "responses" (same protocol) or "a2o", "o2a" (translated)
    model: str
    client_wants_usage: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.cfg.base_url + self.path


def _headers(
    cfg: UpstreamConfig, client_headers: Mapping[str, str], *, same_protocol: bool
) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "application/json"}
    if cfg.protocol == "anthropic":
        headers["anthropic-version"] = (
            same_protocol and client_headers.get("anthropic-version")
        ) or ANTHROPIC_VERSION
        beta = client_headers.get("anthropic-beta") if same_protocol else None
        if beta:
            headers["anthropic-beta"] = beta
        if cfg.secret:
            headers["x-api-key"] = cfg.secret
    elif cfg.secret:
        headers["authorization"] = f"Bearer {cfg.secret}"
    return headers


def build_call(
    cfg: UpstreamConfig, *, surface: str, body: dict[str, Any], model: str, client_headers: Mapping[str, str]
) -> Call:
    """The upstream request for a client request on `surface` ("chat", "completions", "messages",
    "count_tokens", "responses")."""
    stream = bool(body.get("stream"))
    if surface == "responses":
        if cfg.protocol != "openai":
            raise DomainError("the Responses API cannot be routed to an Anthropic upstream", param="model")
        up = {**body, "model": model}
        headers = _headers(cfg, client_headers, same_protocol=True)
        return Call(cfg, "/responses", up, headers, stream, "responses", model)
    if cfg.protocol == "openai":
        if surface in ("chat", "completions"):
            up = {**body, "model": model}
            wants = bool((body.get("stream_options") or {}).get("include_usage"))
            if stream:  # always ask for usage (the audit needs it); dropped again if the client didn't
                up["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            path = "/chat/completions" if surface == "chat" else "/completions"
            return Call(
                cfg,
                path,
                up,
                _headers(cfg, client_headers, same_protocol=True),
                stream,
                "openai",
                model,
                wants,
            )
        if surface == "messages":
            up = translate.messages_to_chat(body, model=model, provider=cfg.provider)
            return Call(cfg, "/chat/completions", up, _headers(cfg, client_headers, same_protocol=False), stream,
                        "a2o", model)  # fmt: skip
        raise DomainError(
            "count_tokens is not available for models served by an OpenAI-style upstream", param="model"
        )
    # Anthropic-style upstream
    if surface in ("messages", "count_tokens"):
        up = {**body, "model": model}
        path = "/v1/messages" if surface == "messages" else "/v1/messages/count_tokens"
        return Call(
            cfg, path, up, _headers(cfg, client_headers, same_protocol=True), stream, "anthropic", model
        )
    if surface == "chat":
        up = translate.chat_to_messages(body, model=model)
        wants = bool((body.get("stream_options") or {}).get("include_usage"))
        return Call(cfg, "/v1/messages", up, _headers(cfg, client_headers, same_protocol=False), stream, "o2a",
                    model, wants)  # fmt: skip
    raise DomainError(
        "text completions cannot be routed to an Anthropic upstream; use chat completions", param="model"
    )


async def open_response(call: Call, *, timeout: float) -> aiohttp.ClientResponse:
    """Send with retries before the first byte; the 2xx response's body is still unread."""
    breaker = breaker_for(call.cfg)
    if not breaker.allow():
        raise UpstreamFailure(f"upstream '{call.cfg.name}' is failing; its circuit is open",
                              kind="circuit_open", status=503)  # fmt: skip
    session = session_for(call.cfg)
    content = _encode.encode(call.body)
    retries = settings.MLXM_UPSTREAM_RETRIES
    backoff = settings.MLXM_UPSTREAM_BACKOFF
    limits = _timeouts(timeout)
    attempt = 0
    while True:
        attempt += 1
        failure: UpstreamFailure
        try:
            resp = await session.post(
                call.url, data=content, headers=call.headers, timeout=limits, allow_redirects=False
            )
        except TimeoutError:  # aiohttp's connect and read timeouts are TimeoutErrors too
            failure = _timed_out(call, timeout)
        except aiohttp.ClientError as exc:  # InvalidURL (a malformed base URL) is one too
            failure = UpstreamFailure(f"could not reach upstream '{call.cfg.name}' ({type(exc).__name__})",
                                      kind="connection_error", status=502)  # fmt: skip
        else:
            if resp.status < 400:
                breaker.success()
                return resp
            try:
                data = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                data = b""
            finally:
                resp.close()
            message = _error_message(data)
            if call.cfg.secret:  # some providers echo the key they were sent
                data = data.replace(call.cfg.secret.encode(), b"****")
                message = message.replace(call.cfg.secret, "****")
            if resp.status in (401, 403):
                # The gateway's credential is refused: not the client's fault, try the next target.
                failure = UpstreamFailure(
                    f"upstream '{call.cfg.name}' refused the gateway's credential ({resp.status})",
                    kind="auth_error",
                    status=502,
                )
            elif resp.status == 429 or resp.status >= 500:
                failure = UpstreamFailure(
                    f"upstream '{call.cfg.name}' answered {resp.status}: {message}",
                    kind="rate_limited" if resp.status == 429 else "upstream_error",
                    status=resp.status,
                    retry_after=_retry_after(resp.headers.get("retry-after")),
                )
            else:
                breaker.success()  # it is up; the request itself is wrong
                raise UpstreamRejected(resp.status, message, data, call.cfg.protocol)
        breaker.failure()
        if attempt > retries or failure.kind == "auth_error" or not breaker.allow():
            raise failure
        delay = backoff * 2 ** (attempt - 1) * (0.75 + random.random() / 2)  # noqa: S311
        if failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        if delay > MAX_RETRY_WAIT_S:
            raise failure  # don't hold the client: fall back now
        log.info("upstream %s: %s; retry %d in %.2fs", call.cfg.name, failure.kind, attempt, delay)
        await asyncio.sleep(delay)


def _timed_out(call: Call, timeout: float) -> UpstreamFailure:
    return UpstreamFailure(f"upstream '{call.cfg.name}' did not answer within {timeout:g}s",
                           kind="timeout", status=504)  # fmt: skip


# ---- answers --------------------------------------------------------------------------


def _responses_usage(u: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) from a Responses API usage object."""
    cached = int(((u.get("input_tokens_details") or {}).get("cached_tokens")) or 0)
    return int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0), cached


def _note_usage(audit: RequestAudit | None, mode: str, data: dict[str, Any]) -> None:
    if audit is None:
        return
    if mode == "responses":
        if data.get("usage"):
            audit.usage(*_responses_usage(data["usage"]))
    elif mode in ("openai", "a2o"):
        if data.get("usage"):
            audit.usage(*translate.tokens_of_openai_usage(data["usage"]))
    elif data.get("usage"):
        audit.usage(*translate.tokens_of_anthropic_usage(data["usage"]))


async def _whole(
    call: Call, resp: aiohttp.ClientResponse, audit: RequestAudit | None, timeout: float
) -> HttpResponse:
    try:
        raw = await resp.read()
    except TimeoutError as exc:
        raise _timed_out(call, timeout) from exc
    except aiohttp.ClientError as exc:  # nothing reached the client yet: the route may fall back
        raise UpstreamFailure(f"upstream '{call.cfg.name}' failed while answering ({type(exc).__name__})",
                              kind="connection_error") from exc  # fmt: skip
    finally:
        resp.close()
    if audit is not None:
        audit.content()
    try:
        data = _decode.decode(raw)
    except msgspec.DecodeError as exc:
        raise UpstreamFailure(
            f"upstream '{call.cfg.name}' sent a body that is not JSON", kind="upstream_error"
        ) from exc
    _note_usage(audit, call.mode, data)
    if call.mode == "a2o":
        raw = _encode.encode(translate.chat_to_message(data, model=call.model))
    elif call.mode == "o2a":
        raw = _encode.encode(translate.message_to_chat(data, model=call.model))
    return HttpResponse(raw, content_type="application/json")


class _Audited:
    """Per-event audit bookkeeping shared by every relay mode."""

    def __init__(self, audit: RequestAudit | None, mode: str) -> None:
        self.audit = audit
        self.mode = mode
        # Anthropic streams give input tokens first and output tokens at the end.
        self.anthropic_usage: dict[str, Any] = {}

    def openai_chunk(self, data: dict[str, Any]) -> None:
        a = self.audit
        if a is None:
            return
        if data.get("usage"):
            a.usage(*translate.tokens_of_openai_usage(data["usage"]))
        for choice in data.get("choices") or ():
            d = choice.get("delta") or {}
            if d.get("content") or d.get("tool_calls") or d.get("reasoning_content") or choice.get("text"):
                a.content()
        if data.get("error") and a is not None:
            err = data["error"]
            a.error_type = str(
                (err.get("code") or err.get("type") or "upstream_error")
                if isinstance(err, dict)
                else "upstream_error"
            )[:64]

    def responses_event(self, data: dict[str, Any]) -> None:
        a = self.audit
        if a is None:
            return
        kind = str(data.get("type") or "")
        if kind.endswith(".delta"):
            a.content()
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            usage = (data.get("response") or {}).get("usage")
            if usage:
                a.usage(*_responses_usage(usage))
        if kind in ("error", "response.failed"):
            a.error_type = str(data.get("code") or "upstream_error")[:64]

    def anthropic_event(self, data: dict[str, Any]) -> None:
        a = self.audit
        if a is None:
            return
        kind = data.get("type")
        if kind == "message_start":
            self.anthropic_usage.update((data.get("message") or {}).get("usage") or {})
        elif kind == "content_block_delta":
            a.content()
        elif kind == "message_delta":
            self.anthropic_usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        elif kind == "error":
            a.error_type = str((data.get("error") or {}).get("type") or "upstream_error")[:64]
        if self.anthropic_usage:
            a.usage(*translate.tokens_of_anthropic_usage(self.anthropic_usage))


def _decode_event(data: str) -> dict[str, Any] | None:
    try:
        value = _decode.decode(data)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


async def _relay(
    call: Call, resp: aiohttp.ClientResponse, audit: RequestAudit | None
) -> AsyncIterator[bytes]:
    """Relay the upstream's events as they arrive (translated if needed)."""
    decoder = SSEDecoder()
    book = _Audited(audit, call.mode)
    a2o = translate.ChatToMessageStream(model=call.model) if call.mode == "a2o" else None
    o2a = (
        translate.MessageToChatStream(model=call.model, include_usage=call.client_wants_usage)
        if call.mode == "o2a"
        else None
    )
    saw_done = False
    try:
        try:
            async for chunk in resp.content.iter_any():
                out: list[bytes] = []
                for ev in decoder.feed(chunk):
                    if call.mode == "responses":  # relayed as is; no [DONE] in this protocol
                        data = _decode_event(ev.data)
                        if data is not None:
                            book.responses_event(data)
                        out.append(ev.raw)
                    elif call.mode in ("openai", "a2o"):
                        if ev.data.strip() == "[DONE]":
                            saw_done = True
                            if a2o is None:
                                out.append(ev.raw)
                            continue
                        data = _decode_event(ev.data)
                        if data is None:
                            continue
                        book.openai_chunk(data)
                        if a2o is not None:
                            out += (
                                [a2o.error(str((data.get("error") or {}).get("message", "upstream error")))]
                                if data.get("error")
                                else a2o.feed(data)
                            )
                        elif data.get("choices") == [] and data.get("usage") and not call.client_wants_usage:
                            continue  # we asked for usage for the audit; the client didn't
                        else:
                            out.append(ev.raw)
                    else:
                        data = _decode_event(ev.data)
                        if data is None:
                            continue
                        book.anthropic_event(data)
                        if o2a is not None:
                            out += o2a.feed(ev.event, data)
                        else:
                            out.append(ev.raw)
                if out:
                    yield b"".join(out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # After the first byte there is no retry: the client gets an error event.
            message = f"upstream '{call.cfg.name}' failed mid-stream ({type(exc).__name__})"
            if audit is not None:
                audit.error_type = "upstream_stream_error"
            if a2o is not None:
                yield a2o.error(message)
            elif o2a is not None:
                yield o2a.error(message) + b"data: [DONE]\n\n"
            elif call.mode == "responses":
                err = {"type": "error", "code": "upstream_error", "message": message, "param": None}
                yield b"event: error\ndata: " + _encode.encode(err) + b"\n\n"
            elif call.mode == "openai":
                err = {"message": message, "type": "server_error", "param": None, "code": "upstream_error"}
                yield b"data: " + _encode.encode({"error": err}) + b"\n\n" + b"data: [DONE]\n\n"
            else:
                yield (
                    b"event: error\ndata: "
                    + _encode.encode({"type": "error", "error": {"type": "api_error", "message": message}})
                    + b"\n\n"
                )
            return
        tail: list[bytes] = []
        if a2o is not None:
            tail += a2o.end()
        elif o2a is not None:
            tail += o2a.end() + [b"data: [DONE]\n\n"]
        elif call.mode == "openai" and not saw_done:
            tail.append(b"data: [DONE]\n\n")
        if tail:
            yield b"".join(tail)
    finally:
        # Back to the pool when the body was read to its end; closed otherwise (a client that
        # went away mid-stream), so no half-read connection is reused.
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()


async def serve(
    cfg: UpstreamConfig,
    *,
    surface: str,
    body: dict[str, Any],
    model: str,
    client_headers: Mapping[str, str],
    timeout: float,
    audit: RequestAudit | None = None,
) -> HttpResponseBase:
    """Answer one client request from this upstream (raises UpstreamFailure to fall back)."""
    call = build_call(cfg, surface=surface, body=body, model=model, client_headers=client_headers)
    if audit is not None:
        audit.upstream_model = model
    resp = await open_response(call, timeout=timeout)
    if not call.stream:
        return await _whole(call, resp, audit, timeout)
    response = StreamingHttpResponse(_relay(call, resp, audit), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def aclose_clients() -> None:
    """Close this loop's pooled connections (tests, shutdown)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _sessions if k[0] == loop_id]:
        await _sessions.pop(key)[1].close()
