"""Against the live gateway: test connection, and the upstream key never shows anywhere."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import Gateway
from tests.gateway_fixtures import Admin, uid
from tests.inference.fakes import FakeUpstream, Step

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]


def test_test_connection_on_the_live_server(
    routed_gateway: Gateway, fake_upstream: FakeUpstream, admin: Admin
) -> None:
    good = admin.credential(fake_upstream, "anthropic_compatible")
    bad = admin.credential(fake_upstream, "openai_compatible", key="sk-wrong")
    assert admin.ok("POST", f"/credentials/{good['id']}/test")["last_test_message"] == "OK: 2 models"
    result = admin.ok("POST", f"/credentials/{bad['id']}/test")
    assert result["last_test_ok"] is False and result["last_test_message"].startswith("HTTP 401")


def test_the_secret_never_appears_in_logs_pages_api_or_the_database(
    routed_gateway: Gateway, fake_upstream: FakeUpstream, admin: Admin
) -> None:
    secret = fake_upstream.key
    cred = admin.credential(fake_upstream, "openai_compatible")
    acred = admin.credential(fake_upstream, "anthropic")
    admin.ok("PATCH", f"/credentials/{acred['id']}", json={"base_url": fake_upstream.url})
    model, failing = uid("leak"), uid("failing")
    fake_upstream.always(failing, Step(status=500, message=f"server error for {secret}"))
    admin.rule(
        model, {"credential": cred["name"], "model": failing}, {"credential": acred["name"], "model": "ok"}
    )
    client = openai.OpenAI(base_url=routed_gateway.v1, api_key=routed_gateway.key, max_retries=0)
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    list(
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    admin.ok("POST", f"/credentials/{cred['id']}/test")
    admin.wait_rows(lambda rows: len(rows) == 2, model=model)
    assert fake_upstream.calls("ok")[-1].headers["x-api-key"] == secret  # it was really used

    for url in ("/credentials/", "/routing/", "/audit/", "/audit/actions/", "/audit/export.csv", "/audit/export.jsonl",
                "/api/credentials/", "/api/rules/", "/api/audit/requests", "/api/audit/actions", "/api/openapi.json"):  # fmt: skip
        r = admin.http.get(url)
        assert r.status_code == 200, url
        assert secret not in r.text, url
    assert secret not in routed_gateway.log_path.read_text(errors="replace")
    for path in routed_gateway.data_dir.glob("mlxmanager.sqlite3*"):
        assert secret.encode() not in path.read_bytes(), path
    fake_upstream.always(failing, None)
