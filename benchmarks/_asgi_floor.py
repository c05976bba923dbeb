"""Bare ASGI apps that bench_proxy.py runs under a web server, to measure what the server and
the HTTP client cost by themselves.

- `hello`: answers every request with a fixed JSON body (the web server's own per-request cost).
- `proxy_httpx` / `proxy_aiohttp`: the least a gateway can do: forward the body to
  `BENCH_UPSTREAM` with one pooled client (httpx.AsyncClient or aiohttp.ClientSession) and
  relay the answer (streamed as it arrives), with no Django, auth, routing or audit. What it
  adds over a direct call is the floor of any gateway built on that server and client.

    python -m uvicorn benchmarks._asgi_floor:hello --port PORT
    BENCH_UPSTREAM=http://... BENCH_UPSTREAM_KEY=... python -m daphne -p PORT benchmarks._asgi_floor:proxy_httpx
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

_httpx: httpx.AsyncClient | None = None
_aiohttp: aiohttp.ClientSession | None = None


async def _body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


def _upstream(scope: dict[str, Any]) -> tuple[str, dict[str, str]]:
    url = os.environ["BENCH_UPSTREAM"].rstrip("/") + scope["path"].removeprefix("/v1")
    headers = {
        "authorization": "Bearer " + os.environ["BENCH_UPSTREAM_KEY"],
        "content-type": "application/json",
    }
    return url, headers


async def _start(send: Any, status: int, ctype: str) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype.encode())]}
    )


async def _relay(send: Any, status: int, ctype: str, chunks: AsyncIterator[bytes]) -> None:
    """The upstream's answer to the client as it arrives."""
    await _start(send, status, ctype)
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await _body(receive)
    await _start(send, 200, "application/json")
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


async def proxy_httpx(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _httpx
    if scope["type"] != "http":
        return
    body = await _body(receive)
    if _httpx is None:
        _httpx = httpx.AsyncClient(trust_env=False, timeout=30)
    url, headers = _upstream(scope)
    response = await _httpx.send(
        _httpx.build_request("POST", url, content=body, headers=headers), stream=True
    )
    try:
        ctype = response.headers.get("content-type", "application/json")
        await _relay(send, response.status_code, ctype, response.aiter_raw())
    finally:
        await response.aclose()


async def proxy_aiohttp(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _aiohttp
    if scope["type"] != "http":
        return
    body = await _body(receive)
    if _aiohttp is None:
        _aiohttp = aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=30))
    url, headers = _upstream(scope)
    async with _aiohttp.post(url, data=body, headers=headers) as response:
        ctype = response.headers.get("content-type", "application/json")
        await _relay(send, response.status, ctype, response.content.iter_any())
