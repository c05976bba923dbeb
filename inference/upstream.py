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
  events come back byte for byte (`Relayed`: the provider's own fields survive, and the relay
  adds no encoding work). Otherwise `inference.translate` translates the request and decodes
  the answer into neutral events (`Stream`) for the client's encoder, as a local answer is.
- Every event is decoded once for the audit (first token time, token usage); prompts and
  answers are never logged. The credential's key only ever goes into request headers.
- With tracing on (mlxmanager/tracing.py), the request carries the W3C `traceparent` of its
  "upstream" span.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from django.conf import settings
from django.http import HttpResponse
from django.http.response import HttpResponseBase

from inference import encoders, translate
from inference import protocol as p
from inference.events import Stream, UpstreamStreamError, failure_of
from inference.sse import SSEDecoder
from mlxmanager import metrics, tracing
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
    _breaker_names[cfg.id] = cfg.name
    b = _breakers.get(cfg.id)
    if b is None:
        b = _breakers[cfg.id] = Breaker(settings.MLXM_BREAKER_FAILURES, settings.MLXM_BREAKER_COOLDOWN)
    return b


def breaker_states() -> dict[int, str]:
    return {k: b.state for k, b in _breakers.items()}


_breaker_names: dict[int, str] = {}


def breaker_names() -> dict[str, str]:
    """Each upstream credential's breaker state in this process, by credential name."""
    return {_breaker_names.get(k, str(k)): b.state for k, b in _breakers.items()}


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
    # "openai", "anthropic", "responses": the client speaks the upstream's protocol and its
    # answer is relayed as is; "decode": it is decoded into neutral events for the client's encoder.
    mode: str
    model: str
    client_wants_usage: bool = True

    @property
    def url(self) -> str:
        return self.cfg.base_url + self.path


def _headers(
    cfg: UpstreamConfig, client_headers: Mapping[str, str], *, same_protocol: bool, request_id: str = ""
) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "application/json"}
    if request_id:
        headers["x-request-id"] = request_id
    if tracing.ENABLED:  # W3C traceparent: the upstream's spans join this request's trace
        tracing.inject(headers)
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
    cfg: UpstreamConfig,
    *,
    surface: str,
    body: dict[str, Any],
    model: str,
    client_headers: Mapping[str, str],
    request_id: str = "",
) -> Call:
    """The upstream request for a client request on `surface` ("chat", "completions", "messages",
    "count_tokens", "responses", or "ws": a chat body whose answer is always decoded)."""
    stream = bool(body.get("stream"))

    def headers(same: bool) -> dict[str, str]:
        return _headers(cfg, client_headers, same_protocol=same, request_id=request_id)

    wants = bool((body.get("stream_options") or {}).get("include_usage"))
    if surface == "responses":
        if cfg.protocol != "openai":
            raise DomainError("the Responses API cannot be routed to an Anthropic upstream", param="model")
        return Call(cfg, "/responses", {**body, "model": model}, headers(True), stream, "responses", model)
    if cfg.protocol == "openai":
        if surface in ("chat", "completions", "ws"):
            up = {**body, "model": model}
            if stream:  # always ask for usage (the audit needs it); dropped again if the client didn't
                up["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            path = "/completions" if surface == "completions" else "/chat/completions"
            mode = "decode" if surface == "ws" else "openai"
            return Call(cfg, path, up, headers(surface != "ws"), stream, mode, model, wants)
        if surface == "messages":
            up = translate.messages_to_chat(body, model=model, provider=cfg.provider)
            return Call(cfg, "/chat/completions", up, headers(False), stream, "decode", model)
        raise DomainError(
            "count_tokens is not available for models served by an OpenAI-style upstream", param="model"
        )
    # Anthropic-style upstream
    if surface in ("messages", "count_tokens"):
        path = "/v1/messages" if surface == "messages" else "/v1/messages/count_tokens"
        return Call(cfg, path, {**body, "model": model}, headers(True), stream, "anthropic", model)
    if surface in ("chat", "ws"):
        up = translate.chat_to_messages(body, model=model)
        return Call(cfg, "/v1/messages", up, headers(False), stream, "decode", model, wants)
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
        metrics.upstream_failed(call.cfg.name, failure.kind)
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
    elif mode == "openai":
        if data.get("usage"):
            audit.usage(*translate.tokens_of_openai_usage(data["usage"]))
    elif data.get("usage"):
        audit.usage(*translate.tokens_of_anthropic_usage(data["usage"]))


async def _read(call: Call, resp: aiohttp.ClientResponse, timeout: float) -> bytes:
    try:
        return await resp.read()
    except TimeoutError as exc:
        raise _timed_out(call, timeout) from exc
    except aiohttp.ClientError as exc:  # nothing reached the client yet: the route may fall back
        raise UpstreamFailure(f"upstream '{call.cfg.name}' failed while answering ({type(exc).__name__})",
                              kind="connection_error") from exc  # fmt: skip
    finally:
        resp.close()


def _json_body(call: Call, raw: bytes) -> dict[str, Any]:
    try:
        data = _decode.decode(raw)
    except msgspec.DecodeError as exc:
        raise UpstreamFailure(
            f"upstream '{call.cfg.name}' sent a body that is not JSON", kind="upstream_error"
        ) from exc
    if not isinstance(data, dict):
        raise UpstreamFailure(f"upstream '{call.cfg.name}' sent an unexpected body", kind="upstream_error")
    return data


async def _whole(
    call: Call, resp: aiohttp.ClientResponse, audit: RequestAudit | None, timeout: float
) -> HttpResponse:
    raw = await _read(call, resp, timeout)
    if audit is not None:
        audit.content()
    _note_usage(audit, call.mode, _json_body(call, raw))
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
    call: Call, resp: aiohttp.ClientResponse, audit: RequestAudit | None, request_id: str
) -> AsyncIterator[bytes]:
    """Relay a same-protocol upstream's events as they arrive, byte for byte."""
    decoder = SSEDecoder()
    book = _Audited(audit, call.mode)
    saw_done = False
    try:
        try:
            async for chunk in resp.content.iter_any():
                out: list[bytes] = []
                for ev in decoder.feed(chunk):
                    if call.mode == "openai" and ev.data.strip() == "[DONE]":
                        saw_done = True
                        out.append(ev.raw)
                        continue
                    data = _decode_event(ev.data)
                    if call.mode == "responses":  # no [DONE] in this protocol
                        if data is not None:
                            book.responses_event(data)
                    elif data is None:
                        continue
                    elif call.mode == "openai":
                        book.openai_chunk(data)
                        if data.get("choices") == [] and data.get("usage") and not call.client_wants_usage:
                            continue  # we asked for usage for the audit; the client didn't
                    else:
                        book.anthropic_event(data)
                    out.append(ev.raw)
                if out:
                    yield b"".join(out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # After the first byte there is no retry: the client gets an error event.
            if audit is not None:
                audit.error_type = "upstream_stream_error"
            failure = failure_of(_stream_failed(call, exc))
            assert failure is not None
            yield encoders.stream_error(call.mode, failure, request_id)
            return
        if call.mode == "openai" and not saw_done:
            yield encoders.DONE
    finally:
        # Back to the pool when the body was read to its end; closed otherwise (a client that
        # went away mid-stream), so no half-read connection is reused.
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()


def _stream_failed(call: Call, exc: BaseException) -> UpstreamStreamError:
    return UpstreamStreamError(f"upstream '{call.cfg.name}' failed mid-stream ({type(exc).__name__})")


async def _decoded(
    call: Call,
    resp: aiohttp.ClientResponse,
    audit: RequestAudit | None,
    chat: translate.ChatChunkDecoder | None,
    message: translate.MessageEventDecoder | None,
) -> AsyncGenerator[list[p.Output], None]:
    """An upstream stream in another protocol than the client's, as neutral output batches."""
    sse = SSEDecoder()
    try:
        try:
            async for chunk in resp.content.iter_any():
                batch: list[p.Output] = []
                for ev in sse.feed(chunk):
                    if chat is not None and ev.data.strip() == "[DONE]":
                        batch += chat.end()
                        chat = None
                        continue
                    data = _decode_event(ev.data)
                    if data is None:
                        continue
                    if chat is not None:
                        batch += chat.feed(data)
                    elif message is not None:
                        batch += message.feed(ev.event, data)
                if batch:
                    _note_outputs(audit, batch)
                    yield batch
                    if batch[-1].finish_reason is not None:
                        return
        except (aiohttp.ClientError, TimeoutError) as exc:
            if audit is not None:
                audit.error_type = "upstream_stream_error"
            raise _stream_failed(call, exc) from exc
        # The stream ended without its last event: end the answer with what was said.
        tail = chat.end() if chat is not None else message.end() if message is not None else []
        if tail:
            _note_outputs(audit, tail)
            yield tail
    finally:
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()


def _note_outputs(audit: RequestAudit | None, batch: list[p.Output]) -> None:
    if audit is None:
        return
    if any(o.text or o.reasoning or o.tool_calls for o in batch):
        audit.content()
    last = batch[-1]
    if last.finish_reason is not None:
        audit.usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens)


def _answer_id(call: Call, upstream_id: str | None, client: str) -> str:
    if call.cfg.protocol == "openai":
        return (
            translate.message_id(upstream_id)
            if client == "anthropic"
            else upstream_id or f"chatcmpl-{uuid.uuid4().hex}"
        )
    return translate.chat_id(upstream_id)


@dataclass
class Relayed:
    """A same-protocol upstream's answer, as the bytes it sent."""

    response: HttpResponseBase


async def serve(
    cfg: UpstreamConfig,
    *,
    surface: str,
    client: str,
    body: dict[str, Any],
    model: str,
    client_headers: Mapping[str, str],
    timeout: float,
    audit: RequestAudit | None = None,
    request_id: str = "",
) -> Relayed | Stream:
    """Answer one client request from this upstream (raises UpstreamFailure to fall back):
    relayed as is when `client` speaks the upstream's protocol, else as neutral events."""
    call = build_call(cfg, surface=surface, body=body, model=model, client_headers=client_headers,
                      request_id=request_id)  # fmt: skip
    if audit is not None:
        audit.upstream_model = model
    resp = await open_response(call, timeout=timeout)
    if tracing.ENABLED:
        tracing.note({"http.response.status_code": resp.status, "mlxm.relay": call.mode})
    if call.mode != "decode":
        if not call.stream:
            return Relayed(await _whole(call, resp, audit, timeout))
        headers = {"X-Request-ID": request_id} if request_id else None
        return Relayed(encoders.event_stream(_relay(call, resp, audit, request_id), headers=headers))
    if not call.stream:
        data = _json_body(call, await _read(call, resp, timeout))
        outputs = (
            translate.chat_outputs(data) if cfg.protocol == "openai" else translate.message_outputs(data)
        )
        _note_outputs(audit, outputs)
        return Stream(
            id=_answer_id(call, data.get("id"), client), model=data.get("model") or model, first=outputs
        )
    chat = translate.ChatChunkDecoder() if cfg.protocol == "openai" else None
    message = translate.MessageEventDecoder() if chat is None else None
    batches = _decoded(call, resp, audit, chat, message)
    try:
        first = await batches.__anext__()
    except StopAsyncIteration:
        first = []
    except (UpstreamStreamError, TimeoutError) as exc:  # nothing reached the client: fall back
        await batches.aclose()
        raise UpstreamFailure(str(exc), kind="upstream_error") from exc
    except BaseException:
        await batches.aclose()
        raise
    # The decoders know the upstream's id and model once their first event is in.
    decoder = chat or message
    assert decoder is not None
    return Stream(
        id=_answer_id(call, decoder.id, client), model=decoder.model or model, first=first, rest=batches
    )


async def aclose_clients() -> None:
    """Close this loop's pooled connections (tests, shutdown)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _sessions if k[0] == loop_id]:
        await _sessions.pop(key)[1].close()
