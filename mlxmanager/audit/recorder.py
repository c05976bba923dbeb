"""Request audit off the request path.

A /v1 request fills a `RequestAudit` (the middleware opens it, the gateway adds the model,
backend and tokens) and hands it to the process-wide `Recorder` when it ends: an O(1)
append to an in-memory buffer. A background thread writes the buffer in batches
(`bulk_create`, and the hourly rollups in the same transaction), publishes the new rows to
the live tail, prunes by the retention setting,
and flushes once more at interpreter exit. Nothing here ever stores prompt or answer text.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.utils import timezone

from mlxmanager.validtext import scrub

log = logging.getLogger(__name__)

LIVE_GROUP = "audit.requests"
CLIENT_CLOSED = 499  # nginx's code for "the client went away before the answer was complete"


@dataclass(slots=True)
class RequestAudit:
    """What one /v1 request did. Mutable: filled in as the request goes."""

    endpoint: str
    created_at: datetime = field(default_factory=timezone.now)
    started: float = field(default_factory=time.perf_counter)
    client_ip: str | None = None
    request_id: str = ""
    user_id: int | None = None
    username: str = ""
    api_key_id: int | None = None
    key_prefix: str = ""
    requested_model: str = ""
    rule: str = ""
    backend: str = ""
    upstream_model: str = ""
    stream: bool = False
    attempts: int = 0
    status: int = 0
    error_type: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    first_token: float | None = None
    first_token_count: int = 0
    last_token: float | None = None
    ended: float | None = None
    queue_wait_s: float | None = None  # time the request waited in the worker (local answers)
    done: bool = False
    observed: bool = False  # counted in the Prometheus metrics

    def tokens(self, *, completion: int, prompt: int | None = None, cached: int | None = None) -> None:
        """Note cumulative token counts as they arrive (first/last token times for TTFT and rate)."""
        if completion > self.completion_tokens or (completion and self.first_token is None):
            now = time.perf_counter()
            if self.first_token is None:
                self.first_token = now
                self.first_token_count = completion
            self.last_token = now
            self.completion_tokens = completion
        if prompt is not None:
            self.prompt_tokens = prompt
        if cached is not None:
            self.cached_tokens = cached

    def content(self) -> None:
        """A piece of the answer arrived (upstreams report token counts only at the end)."""
        now = time.perf_counter()
        if self.first_token is None:
            self.first_token = now
        self.last_token = now

    def usage(self, prompt: int, completion: int, cached: int) -> None:
        self.prompt_tokens, self.completion_tokens, self.cached_tokens = prompt, completion, cached

    def first_output(self) -> None:
        """An answer began (for backends that report tokens only at the end)."""
        if self.first_token is None:
            self.first_token = time.perf_counter()

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token is None else (self.first_token - self.started) * 1000

    @property
    def duration_ms(self) -> float:
        return ((self.ended or time.perf_counter()) - self.started) * 1000

    @property
    def tokens_per_s(self) -> float | None:
        """Decode rate after the first token; None when it is not measurable."""
        if self.first_token is None or self.last_token is None:
            return None
        span = self.last_token - self.first_token
        produced = self.completion_tokens - self.first_token_count
        if span <= 0 or produced <= 0:
            return None
        return produced / span

    def finish(self, status: int, error_type: str = "") -> bool:
        """Close the record once; returns False if it was already closed."""
        if self.done:
            return False
        self.done = True
        self.ended = time.perf_counter()
        self.status = status
        self.error_type = self.error_type or error_type
        return True


_current: ContextVar[RequestAudit | None] = ContextVar("mlxm_request_audit", default=None)


def current() -> RequestAudit | None:
    """The audit record of the /v1 request being served by this task, if any."""
    return _current.get()


def activate(audit: RequestAudit | None) -> Any:
    return _current.set(audit)


def deactivate(token: Any) -> None:
    with contextlib.suppress(ValueError):
        _current.reset(token)


def track_outputs(
    outputs: AsyncGenerator[list[Any], None], audit: RequestAudit | None = None
) -> AsyncGenerator[list[Any], None]:
    """Wrap a worker output stream so the request's audit (given, or the current one) sees its
    token counts. Closing the wrapper closes the inner stream (which aborts it in the worker).
    """
    audit = audit or current()
    if audit is None:
        return outputs
    return _tracked(outputs, audit)


async def _tracked(
    outputs: AsyncGenerator[list[Any], None], audit: RequestAudit
) -> AsyncGenerator[list[Any], None]:
    async with contextlib.aclosing(outputs):
        async for batch in outputs:
            last = batch[-1]
            audit.tokens(
                completion=last.completion_tokens, prompt=last.prompt_tokens, cached=last.cached_tokens
            )
            if last.finish_reason is not None and getattr(last, "queued_s", None) is not None:
                audit.queue_wait_s = last.queued_s  # the worker's own figure, on the final output
            yield batch


def row_of(a: RequestAudit) -> dict[str, Any]:
    """The RequestLog fields of a finished record. Text that came from the request (the model
    of a refused body) may hold lone surrogates: scrubbed, or the flush would fail forever."""
    return {
        "created_at": a.created_at,
        "user_id": a.user_id,
        "username": scrub(a.username[:150]),
        "api_key_id": a.api_key_id,
        "key_prefix": scrub(a.key_prefix[:16]),
        "client_ip": a.client_ip and scrub(a.client_ip),
        "request_id": scrub(a.request_id[:128]),
        "endpoint": scrub(a.endpoint[:64]),
        "requested_model": scrub(a.requested_model[:256]),
        "rule": scrub(a.rule[:100]),
        "backend": scrub(a.backend[:120]),
        "upstream_model": scrub(a.upstream_model[:256]),
        "status": a.status,
        "error_type": scrub(a.error_type[:64]),
        "stream": a.stream,
        "attempts": max(a.attempts, 1),
        "prompt_tokens": max(a.prompt_tokens, 0),
        "completion_tokens": max(a.completion_tokens, 0),
        "cached_tokens": max(a.cached_tokens, 0),
        "ttft_ms": a.ttft_ms,
        "duration_ms": a.duration_ms,
        "tokens_per_s": a.tokens_per_s,
    }


class Recorder:
    """The buffer and its flusher thread. One per process (`recorder`)."""

    def __init__(self) -> None:
        self._buffer: deque[RequestAudit] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_prune = 0.0
        self._stopping = False
        self.dropped = 0
        self.written = 0
        self.listeners: list[Callable[[list[dict[str, Any]]], None]] = []

    # ---- the request path: append only ------------------------------------------

    def add(self, audit: RequestAudit) -> None:
        limit = settings.MLXM_AUDIT_MAX_BUFFER
        with self._lock:
            if len(self._buffer) >= limit:
                # The database is far behind: keep serving, count what the log misses.
                self.dropped += 1
                return
            self._buffer.append(audit)
            size = len(self._buffer)
        if self._loop is None:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
        if settings.MLXM_AUDIT_FLUSH_INTERVAL > 0:
            self._ensure_thread()
            if size >= settings.MLXM_AUDIT_BATCH_SIZE:
                self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    # ---- the flusher ------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="audit-flusher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Flush and end the flusher thread (tests; the process exit flushes by itself)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        self._stopping = False

    def _run(self) -> None:
        # The first retention pass a minute after start, then hourly.
        self._last_prune = time.monotonic() - 3600 + 60
        try:
            self._loop_until_stopped()
        finally:
            connections.close_all()  # this thread's connections only

    def _loop_until_stopped(self) -> None:
        while not self._stopping:
            interval = settings.MLXM_AUDIT_FLUSH_INTERVAL
            if interval <= 0:  # turned off (tests): leave flushing to explicit calls
                return
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.flush()
                self._maybe_prune()
            except Exception:
                log.exception("audit flush failed; will retry")
                close_old_connections()
                time.sleep(min(5.0, settings.MLXM_AUDIT_FLUSH_INTERVAL * 2))

    def flush(self) -> int:
        """Write everything buffered now (any thread); returns the number of rows written."""
        from mlxmanager.audit.models import RequestLog
        from mlxmanager.audit.services import rollup_add

        with self._flush_lock:
            with self._lock:
                batch = list(self._buffer)
            if not batch:
                return 0
            # Counted while still in the buffer, so that a scrape (observe_pending) either counts
            # them itself or waits for this to finish: it never renders without them.
            _observe(batch)
            with self._lock:  # only `add` touches the buffer meanwhile, and only at its end
                for _ in batch:
                    self._buffer.popleft()
            objs = [RequestLog(**row_of(a)) for a in batch]
            try:
                with transaction.atomic():  # the rows and their hourly totals, together
                    RequestLog.objects.bulk_create(objs, batch_size=settings.MLXM_AUDIT_BATCH_SIZE)
                    rollup_add(objs)
            except Exception:
                with self._lock:  # put them back, oldest first, for the next try
                    self._buffer.extendleft(reversed(batch))
                raise
            self.written += len(objs)
        self._publish(objs)
        return len(objs)

    def observe_pending(self) -> None:
        """Count what is still buffered in the metrics now (a scrape of this process)."""
        with self._lock:
            pending = [a for a in self._buffer if not a.observed]
        _observe(pending)

    def _publish(self, objs: list[Any]) -> None:
        from mlxmanager.audit.selectors import live_row

        listeners = list(self.listeners)
        layer = self._live_layer()
        if not listeners and layer is None:
            return  # nobody is watching the live tail: no rows to build
        rows = [live_row(o) for o in objs]
        for listener in listeners:
            with contextlib.suppress(Exception):
                listener(rows)
        if layer is None:
            return
        loop = self._loop
        assert loop is not None
        try:
            message = {"type": "audit.rows", "rows": rows}
            coro = layer.group_send(LIVE_GROUP, message)
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                loop.create_task(coro)
            else:
                # The channel layer belongs to the server's event loop: publish there.
                asyncio.run_coroutine_threadsafe(coro, loop)
        except Exception:
            log.warning("audit live tail publish failed", exc_info=True)

    def _live_layer(self) -> Any:
        """The channel layer to publish the live tail on, or None: no running server loop, no
        layer, or an in-process layer whose live group has no member (a shared layer, Redis,
        may have members in other processes: always published there)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return None
        try:
            from channels.layers import InMemoryChannelLayer, get_channel_layer

            layer = get_channel_layer()
        except Exception:
            log.warning("audit live tail: no channel layer", exc_info=True)
            return None
        if layer is None or (isinstance(layer, InMemoryChannelLayer) and not layer.groups.get(LIVE_GROUP)):
            return None
        return layer

    def _maybe_prune(self) -> None:
        from mlxmanager.sitesettings.selectors import value

        days = int(value("audit_retention_days"))  # the Settings page's, else the environment's
        now = time.monotonic()
        if days <= 0 or now - self._last_prune < 3600:
            return
        self._last_prune = now
        from mlxmanager.audit.services import audit_prune

        audit_prune(days=days)

    def flush_at_exit(self) -> None:
        try:
            self.flush()
        except Exception:
            log.exception("audit rows lost at shutdown")


def _observe(batch: list[RequestAudit]) -> None:
    """The Prometheus figures of finished requests, off the request path: the flusher thread
    counts each batch it takes (a scrape counts its own process's pending ones first)."""
    from mlxmanager import metrics

    with _OBSERVE_LOCK:  # the flusher and a scrape: each request counted once, and in full
        fresh = [a for a in batch if not a.observed]
        for a in fresh:
            a.observed = True
        if fresh:
            metrics.observe_batch(fresh)


_OBSERVE_LOCK = threading.Lock()


recorder = Recorder()
atexit.register(recorder.flush_at_exit)


def record(audit: RequestAudit) -> None:
    recorder.add(audit)
    from mlxmanager.accounts import limits

    limits.add_tokens(audit.api_key_id, audit.prompt_tokens + audit.completion_tokens, user_id=audit.user_id)
    from mlxmanager.usage import budgets

    budgets.add(audit)


def cutoff_for(days: int, *, now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(days=days)
