"""The one request pipeline, end to end: the live gateway (real worker, real tiny model), the
official SDKs, a real WebSocket client, and fake upstreams on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest
from websockets.sync.client import connect

from tests.conftest import Gateway
from tests.gateway_fixtures import Admin, uid
from tests.inference.fakes import FakeUpstream, Step

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]
TINY = "tiny-random"


def _ws_chat(gw: Gateway, admin: Admin, body: dict[str, Any]) -> list[dict[str, Any]]:
    """One chat over the playground's WebSocket: every message up to `done` or `error`."""
    token = admin.ok("POST", "/tokens/stream", params={"purpose": "ws-chat"})["token"]
    url = gw.url.replace("http://", "ws://") + f"/v1/ws/chat?token={token}"
    out: list[dict[str, Any]] = []
    with connect(url, origin=gw.url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", "id": "c1", "body": body}))
        while True:
            msg = json.loads(ws.recv(timeout=60))
            out.append(msg)
            if msg["type"] in ("done", "error"):
                return out


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(m.get("text", "") for m in messages if m["type"] == "delta")


def test_playground_follows_a_rule_to_a_cloud_upstream(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                                        admin: Admin) -> None:  # fmt: skip
    for provider in ("openai_compatible", "anthropic_compatible"):
        cred = admin.credential(fake_upstream, provider)
        model, up = uid("ws"), uid("up")
        admin.rule(model, {"credential": cred["name"], "model": up})
        messages = _ws_chat(
            routed_gateway, admin, {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        )
        assert _text(messages) == "echo: hi", (provider, messages)
        assert messages[-1]["type"] == "done" and messages[-1]["usage"]["completion_tokens"] > 0
        assert len(fake_upstream.calls(up)) == 1
        rows = admin.wait_rows(lambda rows: len(rows) == 1, model=model)
        assert rows[0]["endpoint"] == "/v1/ws/chat" and rows[0]["backend"] == f"cloud:{cred['name']}"
        assert rows[0]["status"] == 200 and rows[0]["request_id"]


def test_playground_falls_back_when_the_upstream_fails(routed_gateway: Gateway, fake_upstream: FakeUpstream,
                                                        admin: Admin) -> None:  # fmt: skip
    cred = admin.credential(fake_upstream, "openai_compatible")
    model, failing = uid("wsfb"), uid("failing")
    fake_upstream.always(failing, Step(status=503))
    admin.rule(model, {"credential": cred["name"], "model": failing}, {"profile": TINY})
    messages = _ws_chat(routed_gateway, admin,
                        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})  # fmt: skip
    assert messages[-1]["type"] == "done", messages
    rows = admin.wait_rows(lambda rows: len(rows) == 1, model=model)
    assert rows[0]["backend"] == f"local:{TINY}" and rows[0]["attempts"] == 2
    fake_upstream.always(failing, None)


def test_models_retrieve_through_the_sdk(routed_gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=routed_gateway.v1, api_key=routed_gateway.key, max_retries=0)
    model = client.models.retrieve(TINY)
    assert model.id == TINY and model.object == "model"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_request_ids_in_headers_errors_and_audit(routed_gateway: Gateway, admin: Admin) -> None:
    gw = routed_gateway
    auth = {"Authorization": f"Bearer {gw.key}"}
    # A client's own id is kept; it is in the header, the error body and the audit row.
    r = httpx.post(f"{gw.v1}/chat/completions", headers={**auth, "X-Request-ID": "client-id-1"},
                   json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert r.status_code == 404 and r.headers["x-request-id"] == "client-id-1"
    assert r.json()["error"]["request_id"] == "client-id-1"
    rows = admin.wait_rows(lambda rows: len(rows) == 1, model="no-such-model")
    assert any(row["request_id"] == "client-id-1" for row in rows)
    # Anthropic's shape carries it too; an id that is no sane token is replaced.
    r = httpx.post(f"{gw.url}/v1/messages", headers={**auth, "X-Request-ID": "bad id;/x"},
                   json={"model": "no-such-model", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    rid = r.headers["x-request-id"]
    assert r.status_code == 404 and rid and rid != "bad id;/x" and r.json()["request_id"] == rid
    assert r.json()["type"] == "error"
    # Successful answers and /api have it as well.
    ok = openai.OpenAI(
        base_url=gw.v1, api_key=gw.key, max_retries=0
    ).chat.completions.with_raw_response.create(
        model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert ok.headers["x-request-id"]
    assert admin.api("GET", "/profiles/").headers["x-request-id"]


def test_request_id_in_a_mid_stream_error(
    routed_gateway: Gateway, fake_upstream: FakeUpstream, admin: Admin
) -> None:
    gw = routed_gateway
    for provider, path in (
        ("openai_compatible", "/v1/chat/completions"),
        ("anthropic_compatible", "/v1/messages"),
    ):
        cred = admin.credential(fake_upstream, provider)
        model, up = uid("mid"), uid("up")
        admin.rule(model, {"credential": cred["name"], "model": up})
        fake_upstream.script(up, Step(drop_midstream=True))
        body = {
            "model": model,
            "stream": True,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "a b c d"}],
        }
        headers = {"Authorization": f"Bearer {gw.key}", "X-Request-ID": f"mid-{provider}"}
        with httpx.stream("POST", gw.url + path, headers=headers, json=body, timeout=30) as r:
            text = r.read().decode()
        assert r.headers["x-request-id"] == f"mid-{provider}"
        errors = [
            json.loads(line[6:])
            for line in text.splitlines()
            if line.startswith("data: {") and '"error"' in line
        ]
        assert errors, text
        assert (
            errors[-1].get("request_id") == f"mid-{provider}"
            or errors[-1]["error"].get("request_id") == f"mid-{provider}"
        )


def test_anthropic_sdk_still_streams_from_the_local_profile(routed_gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=routed_gateway.url, api_key=routed_gateway.key, max_retries=0)
    with client.messages.stream(model=TINY, max_tokens=4, messages=[{"role": "user", "content": "hi"}]) as s:
        final = s.get_final_message()
    assert final.usage.output_tokens > 0 and final.id.startswith("msg_")


def test_a_member_over_their_limit_is_refused_in_the_playground(
    routed_gateway: Gateway, admin: Admin
) -> None:
    name, password = uid("member"), "Quiet-Harbor-7721"
    user = admin.ok("POST", "/users/", json={"username": name, "password": password, "role": "member"})
    limited = admin.ok("PUT", f"/users/{user['id']}/limits", json={"rpm_limit": 1})
    assert limited["rpm_limit"] == 1
    member = Admin(routed_gateway, username=name, password=password)
    chat = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert _ws_chat(routed_gateway, member, chat)[-1]["type"] == "done"
    refused = _ws_chat(routed_gateway, member, chat)[-1]
    assert refused["type"] == "error" and refused["error"]["code"] == "rate_limit_exceeded"
    assert "per minute" in refused["error"]["message"]
    rows = admin.wait_rows(lambda rows: len(rows) == 2, user=name)
    assert sorted(row["status"] for row in rows) == [200, 429]
