"""The `/v1/` ASGI handler: lean middleware, pooled per-request threads, same Django behaviour."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.contrib.auth import get_user_model
from django.core import signals

from mlxmanager.accounts.services import api_key_create
from mlxmanager.asgi import application
from mlxmanager.gateway_asgi import GatewayASGIHandler, split_http
from mlxmanager.profiles.models import Profile

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def _scope(
    path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *(headers or [])],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
    }  # fmt: skip


async def _call(app: Any, scope: dict[str, Any], body: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    comm = ApplicationCommunicator(app, scope)
    await comm.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await comm.receive_output(timeout=10)
    chunks = []
    while True:
        msg = await comm.receive_output(timeout=10)
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    await comm.wait(timeout=10)
    return start["status"], {k.lower(): v for k, v in start["headers"]}, b"".join(chunks)


async def _key() -> str:
    user = await get_user_model().objects.acreate(username="gw-user")
    _, secret = await sync_to_async(api_key_create)(user=user, name="k")
    return secret


async def test_v1_runs_without_the_browser_middleware_and_pages_keep_it() -> None:
    secret = await _key()
    await Profile.objects.acreate(name="m1", model_path="/nowhere")

    status, headers, body = await _call(
        application, _scope("/v1/models", headers=[(b"authorization", f"Bearer {secret}".encode())])
    )
    assert status == 200
    assert b'"m1"' in body
    assert b"x-frame-options" not in headers  # XFrameOptionsMiddleware is not in the /v1 chain
    assert b"set-cookie" not in headers

    status, headers, _ = await _call(application, _scope("/login/"))
    assert status == 200
    assert headers[b"x-frame-options"] == b"DENY"  # pages still get the full chain


async def test_v1_errors_keep_their_shape_and_are_audited() -> None:
    status, headers, body = await _call(application, _scope("/v1/models"))
    assert status == 401
    assert headers[b"content-type"] == b"application/json"
    assert b"invalid_api_key" in body


async def test_each_request_gets_one_thread_and_threads_are_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = GatewayASGIHandler()
    seen: list[list[int]] = []

    async def view(scope: dict[str, Any], receive: Any, send: Any, executor: Any) -> None:
        idents = [await sync_to_async(threading.get_ident)() for _ in range(3)]
        seen.append(idents)

    # Run the handler's own context management around a stand-in for Django's handle().
    monkeypatch.setattr(handler, "handle", view)
    await handler(_scope("/v1/x"), None, None)
    await handler(_scope("/v1/x"), None, None)
    assert len(set(seen[0])) == 1  # one thread for all of a request's thread-sensitive calls
    assert seen[0] == seen[1]  # the next request reuses it: no thread started per request
    assert len(handler._idle) == 1

    seen.clear()
    gate = asyncio.Event()

    async def slow_view(scope: dict[str, Any], receive: Any, send: Any, executor: Any) -> None:
        ident = await sync_to_async(threading.get_ident)()
        await gate.wait()
        seen.append([ident, await sync_to_async(threading.get_ident)()])

    monkeypatch.setattr(handler, "handle", slow_view)
    both = asyncio.gather(handler(_scope("/v1/a"), None, None), handler(_scope("/v1/b"), None, None))
    await asyncio.sleep(0.2)
    gate.set()
    await both
    assert all(a == b for a, b in seen)
    assert seen[0][0] != seen[1][0]  # overlapping requests never share a thread
    assert len(handler._idle) == 2


async def test_request_signals_skip_the_thread_hop_unless_the_request_used_its_thread() -> None:
    """No `request_started` for /v1; `request_finished` (close_old_connections) runs in the
    request's thread when the request ran something there (here: the API-key lookup on a cache
    miss), and on the event loop when it ran nothing (a cached key, a body refused before any
    query)."""
    secret = await _key()
    started: list[int] = []
    finished: list[int] = []

    def on_started(**kwargs: Any) -> None:
        started.append(threading.get_ident())

    def on_finished(**kwargs: Any) -> None:
        finished.append(threading.get_ident())

    signals.request_started.connect(on_started)
    signals.request_finished.connect(on_finished)
    try:
        headers = [(b"authorization", f"Bearer {secret}".encode())]
        loop_thread = threading.get_ident()
        chat = _scope("/v1/chat/completions", "POST", [*headers, (b"content-type", b"application/json")])
        status, _, _ = await _call(application, chat, b"{}")
        assert status == 400
        assert finished[-1] != loop_thread  # the key was read from the database in the request's thread
        status, _, body = await _call(application, chat, b"{}")
        assert status == 400 and b"invalid_request_error" in body
        assert finished[-1] == loop_thread  # a cached key: nothing ran in that thread, no hop
        assert len(finished) == 2 and started == []
        status, _, _ = await _call(application, _scope("/login/"))
        assert status == 200 and len(started) == 1  # pages keep Django's handler as it is
    finally:
        signals.request_started.disconnect(on_started)
        signals.request_finished.disconnect(on_finished)


async def test_url_matches_are_kept_per_path() -> None:
    handler = GatewayASGIHandler()
    secret = await _key()
    headers = [(b"authorization", f"Bearer {secret}".encode())]
    for _ in range(2):
        status, _, body = await _call(handler, _scope("/v1/models", headers=headers))
        assert status == 200 and body.startswith(b'{"object":"list"')
    status, _, body = await _call(handler, _scope("/v1/no/such/route", headers=headers))
    assert status == 404 and b"error" in body
    assert list(handler._resolved) == ["/v1/models", "/v1/no/such/route"]
    assert handler._resolved["/v1/models"].url_name is not None


async def test_lifespan_closes_the_upstream_sessions() -> None:
    from inference import upstream
    from mlxmanager.credentials.selectors import UpstreamConfig

    cfg = UpstreamConfig(id=999_999, name="x", provider="openai_compatible", protocol="openai",
                         base_url="http://127.0.0.1:9", secret="")  # fmt: skip
    session = upstream.session_for(cfg)
    comm = ApplicationCommunicator(application, {"type": "lifespan", "asgi": {"version": "3.0"}})
    await comm.send_input({"type": "lifespan.startup"})
    assert (await comm.receive_output(timeout=5))["type"] == "lifespan.startup.complete"
    await comm.send_input({"type": "lifespan.shutdown"})
    assert (await comm.receive_output(timeout=5))["type"] == "lifespan.shutdown.complete"
    assert session.closed


async def test_split_http_sends_only_v1_to_the_gateway() -> None:
    calls: list[str] = []

    def app(name: str) -> Any:
        async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
            calls.append(f"{name}:{scope['path']}")

        return inner

    split = split_http(gateway=app("gw"), default=app("pages"))
    for path in ("/v1/chat/completions", "/v1", "/api/rules/", "/"):
        await split(_scope(path), None, None)
    assert calls == ["gw:/v1/chat/completions", "pages:/v1", "pages:/api/rules/", "pages:/"]
