"""The chat WebSocket against a real worker process and a real tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from mlxmanager.accounts.tokens import token_mint
from mlxmanager.asgi import application
from mlxmanager.profiles.models import Profile

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.asyncio]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(tmp_path: Path, settings: Any) -> Iterator[str]:
    sock = str(tmp_path / "w.sock")
    env = {**os.environ, "MLXM_DATA_DIR": str(tmp_path), "MLXM_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "inference.worker", "--socket", sock], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "worker did not start"
        time.sleep(0.05)
    settings.MLXM_WORKER_SOCKET = sock
    yield sock
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def chat_setup(worker: str, demo_models: dict[str, Path]) -> dict[str, Any]:
    user = get_user_model().objects.create_user(username="member", password="pw-123456789")
    Profile.objects.create(name="tiny-random", model_path=str(demo_models["tiny-random"]), defaults={})
    return {"token": token_mint(user_id=user.pk, purpose="ws-chat"), "user_id": user.pk}


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **kw}


async def connect(token: str) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(
        application, f"/v1/ws/chat?token={token}", headers=[(b"origin", b"http://127.0.0.1")]
    )
    connected, _ = await comm.connect(timeout=10)
    assert connected
    return comm


async def test_streams_deltas_then_done(chat_setup: dict[str, Any]) -> None:
    comm = await connect(chat_setup["token"])
    await comm.send_json_to({"type": "chat", "id": "a", "body": body(temperature=0)})
    texts = []
    while True:
        msg = await comm.receive_json_from(timeout=60)
        if msg["type"] == "done":
            break
        assert msg["type"] == "delta" and msg["id"] == "a"
        texts.append(msg["text"])
    assert msg["finish_reason"] == "length"
    assert msg["usage"]["completion_tokens"] == 8
    assert "".join(texts)
    await comm.disconnect()


async def test_stop_cancels_generation(chat_setup: dict[str, Any]) -> None:
    comm = await connect(chat_setup["token"])
    await comm.send_json_to({"type": "chat", "id": "long", "body": body(max_tokens=100_000)})
    first = await comm.receive_json_from(timeout=60)
    assert first["type"] == "delta"
    await comm.send_json_to({"type": "stop", "id": "long"})
    while True:
        msg = await comm.receive_json_from(timeout=30)
        if msg["type"] == "done":
            break
    assert msg["finish_reason"] == "cancelled"
    await comm.disconnect()


async def test_bad_requests_get_clear_errors(chat_setup: dict[str, Any]) -> None:
    comm = await connect(chat_setup["token"])
    await comm.send_json_to({"type": "chat", "id": "x", "body": body(temperature=9)})
    msg = await comm.receive_json_from(timeout=10)
    assert msg["type"] == "error" and msg["error"]["param"] == "temperature"
    await comm.send_json_to({"type": "chat", "id": "y", "body": body(model="nope")})
    msg = await comm.receive_json_from(timeout=10)
    assert msg["type"] == "error" and msg["error"]["param"] == "model"
    await comm.send_json_to({"type": "dance", "id": "z"})
    msg = await comm.receive_json_from(timeout=10)
    assert msg["type"] == "error" and msg["error"]["param"] == "type"
    await comm.send_json_to({"type": "chat"})
    msg = await comm.receive_json_from(timeout=10)
    assert msg["error"]["param"] == "id"
    await comm.send_json_to({"type": "chat", "id": "w", "body": body(logprobs=True)})
    msg = await comm.receive_json_from(timeout=10)
    assert msg["type"] == "error" and msg["error"]["param"] == "logprobs"
    await comm.disconnect()


@pytest.mark.parametrize("token", ["", "garbage", "SSE"])
async def test_bad_tokens_are_refused(chat_setup: dict[str, Any], token: str) -> None:
    if token == "SSE":  # a real token minted for another purpose
        token = token_mint(user_id=chat_setup["user_id"], purpose="sse")
    comm = WebsocketCommunicator(
        application, f"/v1/ws/chat?token={token}", headers=[(b"origin", b"http://127.0.0.1")]
    )
    connected, code = await comm.connect(timeout=10)
    assert not connected
    assert code == 4401


async def _audit_rows() -> list[Any]:
    from asgiref.sync import sync_to_async

    from mlxmanager.audit.models import RequestLog
    from mlxmanager.audit.recorder import recorder

    await sync_to_async(recorder.flush)()
    return [r async for r in RequestLog.objects.filter(endpoint="/v1/ws/chat").order_by("id")]


async def test_each_generation_is_audited_with_tokens_and_timings(chat_setup: dict[str, Any]) -> None:
    # The recorder is per process: rows other tests left in its buffer are not this test's.
    for row in await _audit_rows():
        await row.adelete()
    comm = WebsocketCommunicator(
        application, f"/v1/ws/chat?token={chat_setup['token']}", headers=[(b"origin", b"http://127.0.0.1")]
    )
    # As the web server sets it (the consumer has not started yet).
    comm.scope["client"] = ("127.0.0.1", 50000)
    assert (await comm.connect(timeout=10))[0]
    await comm.send_json_to({"type": "chat", "id": "a", "body": body(temperature=0)})
    while (msg := await comm.receive_json_from(timeout=60))["type"] != "done":
        pass
    usage = msg["usage"]
    await comm.send_json_to({"type": "chat", "id": "long", "body": body(max_tokens=100_000)})
    assert (await comm.receive_json_from(timeout=60))["type"] == "delta"
    await comm.send_json_to({"type": "stop", "id": "long"})
    while (msg := await comm.receive_json_from(timeout=30))["type"] != "done":
        pass
    await comm.send_json_to({"type": "chat", "id": "bad", "body": body(temperature=9)})
    assert (await comm.receive_json_from(timeout=10))["type"] == "error"
    await comm.disconnect()

    done, stopped, bad = await _audit_rows()
    assert (done.status, done.error_type, done.username, done.user_id) == (
        200,
        "",
        "member",
        chat_setup["user_id"],
    )
    assert (done.requested_model, done.backend, done.stream, done.client_ip) == (
        "tiny-random", "local:tiny-random", True, "127.0.0.1")  # fmt: skip
    assert done.completion_tokens == usage["completion_tokens"] == 8
    assert done.prompt_tokens == usage["prompt_tokens"] > 0
    assert done.cached_tokens == usage["prompt_tokens_details"]["cached_tokens"]
    assert done.ttft_ms is not None and 0 < done.ttft_ms <= done.duration_ms
    assert done.tokens_per_s is not None and done.tokens_per_s > 0
    assert (stopped.status, stopped.error_type) == (499, "cancelled")
    assert stopped.completion_tokens >= 1 and stopped.ttft_ms is not None
    assert (bad.status, bad.error_type, bad.requested_model) == (400, "invalid_request_error", "tiny-random")
    assert bad.completion_tokens == 0


async def test_a_deactivated_user_is_refused_on_the_next_message() -> None:
    """The user is checked again for every message: deactivating someone stops their open socket."""
    user = await get_user_model().objects.acreate_user(username="leaver", password="Quiet-Harbor-7721")
    token = token_mint(user_id=user.pk, purpose="ws-chat")
    comm = WebsocketCommunicator(
        application,
        f"/v1/ws/chat?token={token}",
        headers=[(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")],
    )
    connected, _ = await comm.connect(timeout=10)
    assert connected
    await comm.send_json_to({"type": "chat", "id": "c1", "body": {"model": "nope", "messages": []}})
    first = await comm.receive_json_from(timeout=10)
    assert first["type"] == "error"  # still active: the message is answered (here: refused as invalid)
    user.is_active = False
    await user.asave(update_fields=["is_active"])
    await comm.send_json_to({"type": "chat", "id": "c2", "body": {"model": "nope", "messages": []}})
    closed = await comm.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 4401}
    await comm.disconnect()
