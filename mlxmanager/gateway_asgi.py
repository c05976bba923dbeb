"""The gateway's own Django ASGI handler for `/v1/` requests.

Costs of Django's ASGI handler that API-key traffic can do without (docs/benchmarks.md,
gateway overhead):

- Browser middleware (sessions, CSRF, auth, messages, clickjacking, htmx): in an async
  Django each `MiddlewareMixin` runs in a thread hop per direction. The gateway handler is
  the same `ASGIHandler` (URLconf, signals, request objects) built with
  `settings.MLXM_GATEWAY_MIDDLEWARE` instead of `settings.MIDDLEWARE`.
- Per-request threads: `ASGIHandler` enters a fresh `ThreadSensitiveContext` per request,
  which starts a new worker thread for the request's thread-sensitive calls and another one
  to join it afterwards. Here each request still gets a thread of its own for the whole
  request (asgiref's `ThreadSensitiveContext(executor=...)`), but the single-thread
  executors are kept in a pool and reused by later requests.
- Thread hops for the request signals. Django sends `request_started` before every request
  and `request_finished` (from `response.close()`) after it; their receivers
  (`reset_queries`, `close_old_connections`) are synchronous, so each costs a hop to the
  request's thread and back, ~0.3-0.4 ms apiece here against a 2 ms budget for the whole
  gateway. `handle` leaves `request_started` out: a request's thread is a pooled executor
  whose connections the previous request left clean. It closes the response in that thread
  (so `close_old_connections` sees that thread's connections) only when the request ran
  something there (a cache miss reading keys or rules, any ORM call); a request that never
  touched its thread has no connection there, and its response is closed on the event loop.
- URL resolution: Django walks the URL patterns for every request. The gateway's paths are
  few and fixed, so `resolve_request` keeps their matches (an LRU of `RESOLVED_PATHS`).

`handle` is Django 5.2's `ASGIHandler.handle` (pinned `django>=5.2.8,<5.3`) with the signal
changes above: same body reading, request creation, disconnect watch and cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import HttpRequest
from django.urls import ResolverMatch, set_script_prefix

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
PREFIX = "/v1/"
# Idle single-thread executors kept for reuse; more are made when requests overlap.
POOL_SIZE = 64
RESOLVED_PATHS = 256


class _Executor(ThreadPoolExecutor):
    """A single-thread executor that counts the calls it was given."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="gateway-sync")
        self.calls = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


class GatewayASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        self._idle: list[_Executor] = []
        self._resolved: OrderedDict[str, ResolverMatch] = OrderedDict()
        super().__init__()

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        if hasattr(request, "urlconf"):  # set by a middleware: not the URLconf the matches came from
            return super().resolve_request(request)
        path = request.path_info
        match = self._resolved.get(path)
        if match is None:
            match = self._resolved[path] = super().resolve_request(request)  # Resolver404 is not kept
            if len(self._resolved) > RESOLVED_PATHS:
                self._resolved.popitem(last=False)
        else:
            self._resolved.move_to_end(path)
            request.resolver_match = match
        return match

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler.load_middleware reads settings.MIDDLEWARE: swap it while the chain is
        # built (once, at startup).
        saved = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.MLXM_GATEWAY_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = saved

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"the gateway handler serves HTTP only, not {scope['type']}")
        executor = self._idle.pop() if self._idle else _Executor()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send, executor)
        finally:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

    async def handle(
        self, scope: dict[str, Any], receive: Any, send: Any, executor: _Executor | None = None
    ) -> None:
        calls = executor.calls if executor is not None else -1
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                assert error_response is not None
                await self.send_response(error_response, send)
                await sync_to_async(error_response.close)()
                return

            async def respond() -> Any:
                response = await self.run_get_response(request)
                with contextlib.suppress(asyncio.CancelledError):  # the client went away meanwhile
                    await self.send_response(response, send)
                return response

            # The disconnect watch first: cancelling it cannot raise anything that would keep
            # the response task from being cancelled in turn.
            tasks = [asyncio.create_task(self.listen_for_disconnect(receive)), asyncio.create_task(respond())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if not task.done():
                    task.cancel()  # a view may handle its cancellation (a stream stops its generation)
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    continue
                with contextlib.suppress(RequestAborted):
                    task.result()
            try:
                response = tasks[1].result()
            except asyncio.CancelledError:
                await signals.request_finished.asend(sender=self.__class__)
                return
            if executor is not None and executor.calls == calls:
                response.close()  # nothing ran in the request's thread: no connection to close there
            else:
                await sync_to_async(response.close)()  # request_finished in the request's thread
        finally:
            body_file.close()


def split_http(*, gateway: ASGIApp, default: ASGIApp) -> ASGIApp:
    """HTTP under `/v1/` to `gateway`, everything else to `default`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"].startswith(PREFIX):
            await gateway(scope, receive, send)
        else:
            await default(scope, receive, send)

    return app


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI lifespan. At shutdown: write the audit rows still buffered and export the trace
    spans (uvicorn ends the process by re-raising the SIGTERM it caught, so `atexit` handlers
    never run) and close the pooled upstream connections of this event loop."""
    from inference import upstream
    from mlxmanager import tracing
    from mlxmanager.audit.recorder import recorder

    def flush_audit() -> None:
        recorder.stop()  # the flusher thread writes what it holds and ends
        recorder.flush_at_exit()

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.to_thread(flush_audit)
            if tracing.ENABLED:  # the spans still buffered go to the collector
                await asyncio.to_thread(tracing.shutdown)
            await upstream.aclose_clients()
            await send({"type": "lifespan.shutdown.complete"})
            return
