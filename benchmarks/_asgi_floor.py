"""Two bare ASGI apps that bench_proxy.py runs under daphne, to measure what daphne itself costs.

- `hello`: answers every request with a fixed JSON body (daphne's own per-request cost).
- `proxy`: the least a daphne + httpx gateway can do: forward the body to `BENCH_UPSTREAM`
  with one pooled `httpx.AsyncClient` and relay the answer (streamed when it is an event
  stream), with no Django, auth, routing or audit. What it adds over a direct call is the
  floor of any gateway built on daphne and httpx.

    python -m daphne -b 127.0.0.1 -p PORT benchmarks._asgi_floor:hello
    BENCH_UPSTREAM=http://... BENCH_UPSTREAM_KEY=... python -m daphne ... benchmarks._asgi_floor:proxy
"""

from __future__ import annotations

import os
from typing import Any

import httpx

_client: httpx.AsyncClient | None = None


async def _body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await _body(receive)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


async def proxy(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _client
    if scope["type"] != "http":
        return
    body = await _body(receive)
    if _client is None:
        _client = httpx.AsyncClient(trust_env=False, timeout=30)
    upstream = os.environ["BENCH_UPSTREAM"].rstrip("/") + scope["path"].removeprefix("/v1")
    headers = {
        "authorization": "Bearer " + os.environ["BENCH_UPSTREAM_KEY"],
        "content-type": "application/json",
    }
    request = _client.build_request("POST", upstream, content=body, headers=headers)
    response = await _client.send(request, stream=True)
    try:
        ctype = response.headers.get("content-type", "application/json").encode()
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": [(b"content-type", ctype)]})  # fmt: skip
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await response.aclose()
