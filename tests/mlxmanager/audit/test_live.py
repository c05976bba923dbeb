"""The audit log against the live gateway: streamed local requests get full token counts
and timings; disconnects, errors and auth failures get rows too; rows reach /api/audit."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.gateway_fixtures import Admin, uid

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

TINY = "tiny-random"


def test_streamed_local_requests_get_tokens_and_timings(routed_gateway: Gateway, admin: Admin) -> None:
    alias = uid("audit")
    admin.rule(alias, {"profile": TINY})
    client = openai.OpenAI(base_url=routed_gateway.v1, api_key=routed_gateway.key, max_retries=0)
    usages = []
    for n in (8, 16):
        chunks = list(client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "count"}],
                                                     max_tokens=n, stream=True, temperature=0,
                                                     stream_options={"include_usage": True}))  # fmt: skip
        usages.append(chunks[-1].usage)
    rows = admin.wait_rows(lambda rows: len(rows) == 2, model=alias)
    for row, usage in zip(reversed(rows), usages, strict=True):
        assert row["endpoint"] == "/v1/chat/completions" and row["stream"] is True and row["status"] == 200
        assert row["prompt_tokens"] == usage.prompt_tokens
        assert row["completion_tokens"] == usage.completion_tokens
        assert row["cached_tokens"] == usage.prompt_tokens_details.cached_tokens
        assert row["backend"] == f"local:{TINY}" and row["rule"] and row["key_prefix"].startswith("mlxm-")
        assert row["client_ip"] == "127.0.0.1" and row["username"] == "admin"
        assert 0 < row["ttft_ms"] <= row["duration_ms"]
        # The decode rate needs tokens after the first batch; on a loaded machine all of a
        # short answer can arrive in one frame, and then it is not measurable (None).
        assert row["tokens_per_s"] is None or row["tokens_per_s"] > 0


def test_anthropic_stream_and_errors_are_audited(routed_gateway: Gateway, admin: Admin) -> None:
    headers = {"x-api-key": routed_gateway.key}
    body = {"model": TINY, "max_tokens": 6, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", routed_gateway.v1 + "/messages", json=body, headers=headers, timeout=60) as r:
        events = r.read().decode()
    assert "message_stop" in events
    httpx.post(routed_gateway.v1 + "/chat/completions", json={"model": "no-such-" + uid(), "messages": [{"role": "user", "content": "x"}]},
               headers={"Authorization": f"Bearer {routed_gateway.key}"})  # fmt: skip
    httpx.post(
        routed_gateway.v1 + "/chat/completions",
        json={"model": TINY},
        headers={"Authorization": "Bearer nope"},
    )
    rows = admin.wait_rows(lambda rows: len([r for r in rows if r["endpoint"] in ("/v1/messages", "/v1/chat/completions")]) >= 3
                           and any(r["status"] == 401 for r in rows))  # fmt: skip
    msg = next(r for r in rows if r["endpoint"] == "/v1/messages" and r["requested_model"] == TINY)
    assert msg["completion_tokens"] > 0 and msg["prompt_tokens"] > 0 and msg["stream"]
    missing = next(r for r in rows if r["status"] == 404)
    assert missing["error_type"] == "model_not_found" and missing["requested_model"].startswith("no-such-")
    unauth = next(r for r in rows if r["status"] == 401)
    assert unauth["username"] == "" and unauth["error_type"] == "invalid_api_key"


def test_client_disconnect_is_audited(routed_gateway: Gateway, admin: Admin) -> None:
    alias = uid("gone")
    admin.rule(alias, {"profile": TINY})
    body = {
        "model": alias,
        "max_tokens": 2000,
        "stream": True,
        "messages": [{"role": "user", "content": "go"}],
    }
    with httpx.stream("POST", routed_gateway.v1 + "/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {routed_gateway.key}"}, timeout=60) as r:  # fmt: skip
        for n, _ in enumerate(r.iter_bytes()):
            if n > 3:
                break
    rows = admin.wait_rows(lambda rows: len(rows) == 1, model=alias)
    assert rows[0]["status"] == 499 and rows[0]["error_type"] == "client_closed"
    assert 0 < rows[0]["completion_tokens"] < 2000


def test_live_pages_render_and_export(routed_gateway: Gateway, admin: Admin) -> None:
    # Make sure there is at least one row to export, whatever ran before.
    httpx.get(
        routed_gateway.v1 + "/models", headers={"Authorization": f"Bearer {routed_gateway.key}"}, timeout=30
    )
    admin.wait_rows(lambda rows: len(rows) >= 1)
    page = admin.http.get("/audit/")
    assert page.status_code == 200 and "Audit log" in page.text
    assert admin.http.get("/audit/summary/").status_code == 200
    csv = admin.http.get("/audit/export.csv")
    assert csv.status_code == 200 and csv.text.startswith("id,created_at,username")
    lines = admin.http.get("/audit/export.jsonl").text.strip().splitlines()
    assert lines and all(line.startswith("{") for line in lines)
