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


async def _ask(ws_url: str, origin: str, *messages: dict[str, Any]) -> list[dict[str, Any]]:
    """Send each one-shot message (transcribe, speech) and collect one answer per message."""
    import websockets

    answers = []
    async with websockets.connect(ws_url, origin=origin, max_size=None) as ws:  # type: ignore[arg-type]
        for message in messages:
            await ws.send(json.dumps(message))
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=120)))
    return answers


def test_ws_transcribe_and_speech(gateway: Gateway) -> None:
    """The playground's dictation and read-aloud: the demo speech profiles, over the socket."""
    import base64
    import io

    import soundfile as sf

    from tests.inference.api.test_audio import STT, TTS, encoded, tone

    admin = Admin(gateway)
    token = admin.ok("POST", "/tokens/stream", params={"purpose": "ws-chat"})["token"]
    ws_url = gateway.url.replace("http://", "ws://") + f"/v1/ws/chat?token={token}"
    wav = base64.b64encode(encoded(tone(1.5), 16000, "WAV")).decode()
    heard, spoken = asyncio.run(
        _ask(
            ws_url,
            gateway.url,
            {"type": "transcribe", "id": "t1", "model": STT, "audio": wav, "language": "en"},
            {"type": "speech", "id": "s1", "model": TTS, "input": "Hello from the playground."},
        )
    )
    assert heard["type"] == "transcript" and heard["id"] == "t1", heard
    assert isinstance(heard["text"], str)
    assert spoken["type"] == "audio" and spoken["id"] == "s1" and spoken["format"] == "wav", spoken
    samples, rate = sf.read(io.BytesIO(base64.b64decode(spoken["data"])))
    assert rate > 0 and len(samples) > 0


def test_ws_speech_errors_are_clear(gateway: Gateway) -> None:
    from tests.inference.api.test_audio import STT, TTS

    admin = Admin(gateway)
    token = admin.ok("POST", "/tokens/stream", params={"purpose": "ws-chat"})["token"]
    ws_url = gateway.url.replace("http://", "ws://") + f"/v1/ws/chat?token={token}"
    answers = asyncio.run(
        _ask(
            ws_url,
            gateway.url,
            {"type": "transcribe", "id": "e1", "model": STT, "audio": "not base64!"},
            {"type": "transcribe", "id": "e2", "model": STT, "audio": "aGVsbG8="},  # "hello": not audio
            {"type": "transcribe", "id": "e3", "model": "tiny-random", "audio": "aGVsbG8="},
            {"type": "speech", "id": "e4", "model": TTS},
            {"type": "speech", "id": "e5", "model": STT, "input": "hi"},
            {"type": "transcribe", "id": "e6", "audio": "aGVsbG8="},
        )
    )
    by_id = {a["id"]: a for a in answers}
    assert all(a["type"] == "error" for a in answers), answers
    assert by_id["e1"]["error"]["param"] == "audio" and "base64" in by_id["e1"]["error"]["message"]
    assert by_id["e2"]["error"]["param"] == "file" or "decoded" in by_id["e2"]["error"]["message"]
    assert by_id["e3"]["error"]["code"] == "wrong_model_type"
    assert by_id["e4"]["error"]["param"] == "input"
    assert by_id["e5"]["error"]["code"] == "wrong_model_type"
    assert by_id["e6"]["error"]["param"] == "model"
