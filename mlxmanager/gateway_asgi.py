"""The gateway's own Django ASGI handler for `/v1/` requests.

Two costs of Django's ASGI handler are avoidable for API-key traffic:

- Browser middleware (sessions, CSRF, auth, messages, clickjacking, htmx): in an async
  Django each `MiddlewareMixin` runs in a thread hop per direction. The gateway handler is
  the same `ASGIHandler` (URLconf, signals, request objects) built with
  `settings.MLXM_GATEWAY_MIDDLEWARE` instead of `settings.MIDDLEWARE`.
- Per-request threads: `ASGIHandler` enters a fresh `ThreadSensitiveContext` per request,
  which starts a new worker thread for the request's thread-sensitive calls and another one
  to join it afterwards. Here each request still gets a thread of its own for the whole
  request (asgiref's `ThreadSensitiveContext(executor=...)`), but the single-thread
  executors are kept in a pool and reused by later requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
PREFIX = "/v1/"
# Idle single-thread executors kept for reuse; more are made when requests overlap.
POOL_SIZE = 64


class GatewayASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        self._idle: list[ThreadPoolExecutor] = []
        super().__init__()

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
        executor = (
            self._idle.pop() if self._idle else ThreadPoolExecutor(1, thread_name_prefix="gateway-sync")
        )
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)


def split_http(*, gateway: ASGIApp, default: ASGIApp) -> ASGIApp:
    """HTTP under `/v1/` to `gateway`, everything else to `default`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"].startswith(PREFIX):
            await gateway(scope, receive, send)
        else:
            await default(scope, receive, send)

    return app
