"""A script drives the live server's /api with admin tokens (httpx, `Authorization: Bearer`, no
session or CSRF): a write token creates a profile, a routing rule and an API key limited to
them; the key sees only its models on /v1 and is refused on /api; the admin token is refused on
/v1; a read token cannot write; an expired token is refused; every use is in the audit log."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.gateway_fixtures import Admin, admin, fake_upstream, routed_gateway, uid  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]


def script(gw: Gateway, token: str) -> httpx.Client:
    return httpx.Client(base_url=gw.url + "/api", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_a_script_manages_keys_profiles_and_rules_with_admin_tokens(
    routed_gateway: Gateway,  # noqa: F811
    admin: Admin,  # noqa: F811
    demo_models: dict[str, Path],
) -> None:
    gw = routed_gateway
    name = uid("ci")
    write = admin.ok("POST", "/admin-tokens/", json={"name": name, "scope": "write", "expires_days": 1})
    read = admin.ok("POST", "/admin-tokens/", json={"name": name + "-ro", "scope": "read", "expires_days": 1})
    brief = admin.ok("POST", "/admin-tokens/", json={"name": name + "-brief", "scope": "write",
                                                      "expires_days": 0.00003})  # about 2.6 s  # fmt: skip
    made_at = time.monotonic()

    with script(gw, write["token"]) as api:
        profile = uid("p")
        r = api.post("/profiles", json={"name": profile, "model_path": str(demo_models["tiny-random"])})
        assert r.status_code == 201, r.text
        pattern = f"{profile}-alias-*"
        r = api.post("/rules/", json={"name": uid("r"), "match_type": "glob", "pattern": pattern,
                                      "targets": [{"profile": profile}]})  # fmt: skip
        assert r.status_code == 201, r.text
        assert {profile, pattern} <= set(api.get("/keys/models").json())
        r = api.post("/keys/", json={"name": uid("k"), "allowed_models": [profile, pattern]})
        assert r.status_code == 201, r.text
        key = r.json()
        r = api.post("/keys/", json={"name": uid("k"), "allowed_models": ["no-such-model"]})
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        listed = api.get("/keys/all").json()
        assert any(k["id"] == key["id"] and k["username"] == "admin" for k in listed)

    # The new key sees only its model on /v1; the admin token is no /v1 credential; the key is
    # no /api credential.
    v1 = openai.OpenAI(base_url=gw.v1, api_key=key["key"], max_retries=0, timeout=60)
    assert [m.id for m in v1.models.list()] == [profile]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.v1, api_key=write["token"], max_retries=0, timeout=60).models.list()
    with script(gw, key["key"]) as as_key:
        r = as_key.get("/keys/")
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"

    with script(gw, read["token"]) as ro:
        assert ro.get("/keys/all").status_code == 200
        r = ro.post("/keys/", json={"name": uid("k")})
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        r = ro.patch(f"/profiles/{profile}", json={"description": "x"})
        assert r.status_code == 403

    time.sleep(max(0.0, 3.0 - (time.monotonic() - made_at)))
    with script(gw, brief["token"]) as late:
        r = late.get("/keys/all")
        assert r.status_code == 401 and "expired" in r.json()["detail"]

    actions = admin.ok("GET", "/audit/actions")
    used = [
        a for a in actions if a["action"] == "mlxmanager.admintoken.used" and name in a["data"]["via_token"]
    ]
    assert {(a["data"]["method"], a["data"]["path"]) for a in used} >= {
        ("POST", "/api/profiles"), ("POST", "/api/rules/"), ("POST", "/api/keys/"), ("GET", "/api/keys/all")
    }  # fmt: skip
    assert any(a.get("data", {}).get("refused") == "read-only" for a in used)
    made = [a for a in actions if a["action"] == "mlxmanager.profile.created" and a["object_repr"] == profile]
    assert made and made[0]["actor_name"] == "admin" and made[0]["data"]["via_token"].startswith(name + " (")
