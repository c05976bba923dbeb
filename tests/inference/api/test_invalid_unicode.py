"""Invalid Unicode (a lone surrogate, `"\\ud800"` in the JSON) is a 400 naming the field on
every JSON surface of /v1 and on the chat WebSocket, never a 500 once the text reaches the
worker's msgpack encoder (or the database)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from mlxmanager.accounts.services import api_key_create
from mlxmanager.accounts.tokens import token_mint
from mlxmanager.profiles.models import Profile

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

HI = '[{"role":"user","content":"hi"}]'
ANTHROPIC = {"anthropic-version": "2023-06-01"}

# (path, raw JSON body, the field the 400 names). `\\ud800` here is the six characters of
# the JSON escape: json.loads turns it into the lone surrogate U+D800.
CASES = [
    ("/v1/chat/completions", r'{"model":"m","messages":[{"role":"user","content":"\ud800"}]}',
     "messages.0.content"),
    ("/v1/chat/completions", r'{"model":"m","messages":' + HI + r',"stop":["ok","a\udfff"]}', "stop.1"),
    ("/v1/chat/completions", r'{"model":"m","messages":' + HI + r',"stop":"\udc00"}', "stop"),
    ("/v1/chat/completions", r'{"model":"m\ud800","messages":' + HI + "}", "model"),
    ("/v1/chat/completions",
     r'{"model":"m","messages":' + HI + r',"tools":[{"type":"function","function":{"name":"f",'
     r'"parameters":{"type":"object","description":"\ud83d"}}}]}',
     "tools.0.function.parameters.description"),
    ("/v1/chat/completions",
     r'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x\ud800y"}]}]}',
     "messages.0.content.0.text"),
    ("/v1/completions", r'{"model":"m","prompt":"\ud800"}', "prompt"),
    ("/v1/completions", r'{"model":"m","prompt":["ok","\ud800"]}', "prompt.1"),
    ("/v1/embeddings", r'{"model":"m","input":["ok","\ud800"]}', "input.1"),
    ("/v1/responses", r'{"model":"m","input":"\ud800"}', "input"),
    ("/v1/responses", r'{"model":"m","input":"hi","instructions":"\udfff"}', "instructions"),
    ("/v1/messages", r'{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"\ud800"}]}',
     "messages.0.content"),
    ("/v1/messages/count_tokens", r'{"model":"m","system":"\ud800","messages":' + HI + "}", "system"),
]  # fmt: skip


@pytest.fixture
def no_worker(settings: Any, tmp_path: Path) -> None:
    settings.MLXM_WORKER_SOCKET = str(tmp_path / "nobody-listens.sock")
    settings.MLXM_WORKER_CONNECT_TIMEOUT = 0.5


@pytest_asyncio.fixture
async def auth(no_worker: None, django_user_model: Any) -> dict[str, str]:
    user = await django_user_model.objects.acreate(username="u")
    _, secret = await sync_to_async(api_key_create)(user=user, name="k")
    await Profile.objects.acreate(name="m", model_path="/nowhere")
    return {"Authorization": f"Bearer {secret}", "x-api-key": secret, **ANTHROPIC}


async def post(path: str, raw: str | bytes, auth: dict[str, str]) -> Any:
    data = raw.encode() if isinstance(raw, str) else raw
    return await AsyncClient().post(path, data, content_type="application/json", headers=auth)


def error_of(path: str, r: Any) -> tuple[str, str | None]:
    """(message, param) of an OpenAI- or Anthropic-shaped 400."""
    assert r.status_code == 400, (path, r.status_code, r.content)
    body = msgspec.json.decode(r.content)  # valid UTF-8 JSON, or this raises
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        return body["error"]["message"], None
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]["message"], body["error"]["param"]


@pytest.mark.parametrize(("path", "raw", "param"), CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
async def test_a_lone_surrogate_is_a_400_naming_the_field(
    auth: dict[str, str], path: str, raw: str, param: str
) -> None:
    assert "\\ud" in raw and json.loads(raw)  # the escape, decoded to a surrogate by the parser
    message, got = error_of(path, await post(path, raw, auth))
    assert "invalid Unicode" in message
    if path.startswith("/v1/messages"):
        assert f"'{param}'" in message  # Anthropic's shape names the field in the message
    else:
        assert got == param


async def test_a_surrogate_sent_as_raw_utf8_bytes_is_refused_too(auth: dict[str, str]) -> None:
    """ED A0 80 is U+D800 "encoded" as UTF-8 (invalid UTF-8): the JSON parser lets it through."""
    raw = b'{"model":"m","messages":[{"role":"user","content":"a\xed\xa0\x80"}]}'
    message, param = error_of("/v1/chat/completions", await post("/v1/chat/completions", raw, auth))
    assert param == "messages.0.content"


async def test_a_surrogate_in_a_key_is_refused_without_echoing_it(auth: dict[str, str]) -> None:
    raw = r'{"model":"m","messages":[{"role":"user","content":"hi","\ud800":1}]}'
    message, param = error_of("/v1/chat/completions", await post("/v1/chat/completions", raw, auth))
    assert param == "messages.0" and "invalid Unicode" in message and "key" in message
    raw = r'{"model":"m","messages":' + HI + r',"\ud800":1}'
    message, _ = error_of("/v1/chat/completions", await post("/v1/chat/completions", raw, auth))
    assert "invalid Unicode" in message


async def test_a_surrogate_inside_tool_call_arguments_is_refused(auth: dict[str, str]) -> None:
    """`arguments` is JSON inside a string: its own `\\ud800` escape decodes to a surrogate."""
    args = json.dumps(json.dumps({"city": "\ud800"}))  # '"{\"city\": \"\\ud800\"}"'
    raw = (
        r'{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant",'
        r'"tool_calls":[{"id":"c1","function":{"name":"f","arguments":' + args + r"}}]},"
        r'{"role":"tool","tool_call_id":"c1","content":"ok"}]}'
    )
    _, param = error_of("/v1/chat/completions", await post("/v1/chat/completions", raw, auth))
    assert param == "messages[1].tool_calls[0].function.arguments"


async def test_a_surrogate_inside_responses_function_call_arguments_is_refused(auth: dict[str, str]) -> None:
    args = json.dumps(json.dumps({"city": "\ud800"}))
    raw = (
        r'{"model":"m","input":[{"type":"function_call","call_id":"c1","name":"f","arguments":'
        + args
        + r'},{"type":"function_call_output","call_id":"c1","output":"ok"}]}'
    )
    message, param = error_of("/v1/responses", await post("/v1/responses", raw, auth))
    assert "invalid Unicode" in message and param == "input[0].arguments"


async def test_valid_astral_text_still_passes(auth: dict[str, str]) -> None:
    """A surrogate *pair* escape is one valid code point (U+1F600): no 400 for it (the request
    gets as far as the worker, which is not running here)."""
    raw = r'{"model":"m","messages":[{"role":"user","content":"\ud83d\ude00 \u00e9"}]}'
    r = await post("/v1/chat/completions", raw, auth)
    assert r.status_code == 503, r.content


async def test_the_chat_websocket_refuses_a_lone_surrogate(no_worker: None, django_user_model: Any) -> None:
    from mlxmanager.asgi import application

    user = await django_user_model.objects.acreate(username="member")
    await Profile.objects.acreate(name="m", model_path="/nowhere")
    token = token_mint(user_id=user.pk, purpose="ws-chat")
    comm = WebsocketCommunicator(
        application, f"/v1/ws/chat?token={token}", headers=[(b"origin", b"http://127.0.0.1")]
    )
    connected, _ = await comm.connect(timeout=10)
    assert connected
    await comm.send_to(
        text_data=r'{"type":"chat","id":"a","body":{"model":"m","messages":[{"role":"user","content":"\ud800"}]}}'
    )
    msg = await comm.receive_json_from(timeout=10)
    assert msg["type"] == "error" and msg["id"] == "a", msg
    assert msg["error"]["param"] == "messages.0.content"
    assert "invalid Unicode" in msg["error"]["message"]
    await comm.disconnect()


async def test_speech_refuses_a_lone_surrogate(auth: dict[str, str]) -> None:
    raw = r'{"model":"m","input":"hi","response_format":"\ud800"}'
    _, param = error_of("/v1/audio/speech", await post("/v1/audio/speech", raw, auth))
    assert param == "response_format"
