"""`/v1/ws/chat` end to end: a logged-in user's stream token, a real WebSocket to the live
server (under each supported web server), deltas then done."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.gateway_fixtures import Admin

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]


async def _chat(ws_url: str, origin: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    import websockets

    messages = []
    async with websockets.connect(ws_url, origin=origin) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "chat", "id": "q1", "body": body}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
            messages.append(msg)
            if msg["type"] in ("done", "error"):
                return messages


def test_ws_chat_streams_deltas_then_done(gateway_on: Gateway) -> None:
    admin = Admin(gateway_on)
    token = admin.ok("POST", "/tokens/stream", params={"purpose": "ws-chat"})["token"]
    ws_url = gateway_on.url.replace("http://", "ws://") + f"/v1/ws/chat?token={token}"
    body = {"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    messages = asyncio.run(_chat(ws_url, gateway_on.url, body))
    *deltas, done = messages
    assert done["type"] == "done" and done["id"] == "q1", messages
    assert done["finish_reason"] in ("length", "stop") and done["usage"]["completion_tokens"] > 0
    assert deltas and all(m["type"] == "delta" and m["id"] == "q1" for m in deltas)
    assert "".join(m.get("text", "") for m in deltas)
