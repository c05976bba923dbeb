"""Admin tokens for /api: created and revoked on their page and via /api, hashed, scoped,
expiring, sent as `Authorization: Bearer` (no CSRF), every use audited; API keys don't work on
/api. (That admin tokens don't work on /v1 is in the live test, test_admin_tokens_live.py.)"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from mlxmanager.accounts.models import AdminToken, ApiKey
from mlxmanager.accounts.services import admin_token_create, api_key_create, hash_key
from mlxmanager.audit.models import AdminAction
from mlxmanager.errors import DomainError, PermissionDenied

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def test_create_stores_only_a_digest_and_is_audited(admin) -> None:
    token, secret = admin_token_create(user=admin, name="ci", scope="write", expires_days=30)
    assert secret.startswith("mlxa-") and token.prefix == secret[:11]
    assert token.digest == hash_key(secret) and secret not in str(AdminToken.objects.values().get())
    assert timezone.now() + timedelta(days=29) < token.expires_at <= timezone.now() + timedelta(days=30)
    entry = AdminAction.objects.get(action="mlxmanager.admintoken.created")
    assert entry.actor_name == "boss" and entry.data["scope"] == "write" and secret not in str(entry.data)


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"name": "", "scope": "read", "expires_days": 1}, "name"),
        ({"name": "x", "scope": "admin", "expires_days": 1}, "scope"),
        ({"name": "x", "scope": "read", "expires_days": 0}, "expires_days"),
        ({"name": "x", "scope": "read", "expires_days": 366}, "expires_days"),
        ({"name": "x", "scope": "read", "expires_days": None}, "expires_days"),
    ],
)
def test_create_refuses_bad_input(admin, kw: dict[str, object], param: str) -> None:
    with pytest.raises(DomainError) as exc:
        admin_token_create(user=admin, **kw)  # type: ignore[arg-type]
    assert exc.value.param == param


def test_members_cannot_create_tokens(member) -> None:
    with pytest.raises(PermissionDenied):
        admin_token_create(user=member, name="x", scope="write", expires_days=1)


def test_write_token_drives_the_api_without_csrf_and_every_use_is_audited(admin, member) -> None:
    token, secret = admin_token_create(user=admin, name="ci", scope="write", expires_days=1)
    api = Client(enforce_csrf_checks=True)  # no session, no CSRF token: the bearer is enough
    r = api.get("/api/users/", **bearer(secret))
    assert r.status_code == 200 and {u["username"] for u in r.json()} == {"boss", "member"}
    r = api.post("/api/keys/", {"name": "from-ci"}, content_type="application/json", **bearer(secret))
    assert r.status_code == 201, r.content
    key = ApiKey.objects.get(name="from-ci")
    assert key.user == admin  # the token acts as the admin who made it

    uses = AdminAction.objects.filter(action="mlxmanager.admintoken.used").order_by("id")
    assert [(u.data["method"], u.data["path"]) for u in uses] == [
        ("GET", "/api/users/"),
        ("POST", "/api/keys/"),
    ]
    assert all(u.actor_name == "boss" and u.data["via_token"] == str(token) for u in uses)
    created = AdminAction.objects.get(action="mlxmanager.apikey.created", object_id=str(key.pk))
    assert created.actor_name == "boss" and created.data["via_token"] == f"ci ({token.prefix}…)"
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_read_token_reads_but_cannot_write(admin) -> None:
    _, secret = admin_token_create(user=admin, name="dash", scope="read", expires_days=1)
    api = Client()
    assert api.get("/api/keys/all", **bearer(secret)).status_code == 200
    r = api.post("/api/keys/", {"name": "nope"}, content_type="application/json", **bearer(secret))
    assert r.status_code == 403 and r["Content-Type"] == "application/problem+json"
    assert "read-only" in r.json()["detail"]
    r = api.post("/api/rules/", {"junk": 1}, content_type="application/json", **bearer(secret))
    assert r.status_code == 403  # refused before the body is read
    assert not ApiKey.objects.exists()
    refused = AdminAction.objects.filter(action="mlxmanager.admintoken.used", data__refused="read-only")
    assert refused.count() == 2


@pytest.mark.parametrize("state", ["expired", "revoked", "unknown", "api-key", "demoted"])
def test_bad_tokens_are_a_401_problem(admin, make_user, state: str) -> None:
    owner = make_user(admin=True, username="owner")
    token, secret = admin_token_create(user=owner, name="t", scope="write", expires_days=1)
    if state == "expired":
        AdminToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    elif state == "revoked":
        AdminToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    elif state == "unknown":
        secret = "mlxa-" + "x" * 43
    elif state == "api-key":
        _, secret = api_key_create(user=owner, name="v1-key")  # a /v1 key is no /api credential
    elif state == "demoted":
        owner.is_staff = False
        owner.save()
    # Even with an admin's session alongside: a token sent is a token checked.
    client = Client()
    client.force_login(admin)
    r = client.get("/api/users/", **bearer(secret))
    assert r.status_code == 401 and r["Content-Type"] == "application/problem+json"
    assert "admin token" in r.json()["detail"]


def test_api_create_list_revoke(admin) -> None:
    _, secret = admin_token_create(user=admin, name="root", scope="write", expires_days=1)
    api = Client()
    r = api.post(
        "/api/admin-tokens/", {"name": "ro", "scope": "read", "expires_days": 7},
        content_type="application/json", **bearer(secret),
    )  # fmt: skip
    assert r.status_code == 201 and r.json()["token"].startswith("mlxa-") and r.json()["created_by"] == "boss"
    new_id, new_secret = r.json()["id"], r.json()["token"]
    listed = api.get("/api/admin-tokens/", **bearer(secret)).json()
    assert {t["name"] for t in listed} == {"root", "ro"} and all("token" not in t for t in listed)
    assert api.get("/api/keys/", **bearer(new_secret)).status_code == 200
    r = api.post(f"/api/admin-tokens/{new_id}/revoke", **bearer(secret))
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert api.get("/api/keys/", **bearer(new_secret)).status_code == 401
    assert AdminAction.objects.filter(action="mlxmanager.admintoken.revoked", object_id=str(new_id)).exists()
    r = api.post("/api/admin-tokens/", {"name": "x", "scope": "root"}, content_type="application/json",
                 **bearer(secret))  # fmt: skip
    assert r.status_code == 400 and r.json()["param"] == "scope"


def test_members_get_403_on_admin_tokens_api(member_client: Client) -> None:
    assert member_client.get("/api/admin-tokens/").status_code == 403


# --- the page ---------------------------------------------------------------------------------


def test_page_creates_shows_once_and_revokes(client: Client, admin) -> None:
    client.force_login(admin)
    assert client.get("/admin-tokens/").status_code == 200
    r = client.post("/admin-tokens/", {"name": "ci", "scope": "write", "expires_days": "30"}, **HTMX)
    assert r.status_code == 200
    shown = re.search(r'<pre id="new-token">([^<]+)</pre>', r.content.decode())
    assert shown and AdminToken.objects.get(name="ci").digest == hash_key(shown.group(1))
    assert "new-token" not in client.get("/admin-tokens/").content.decode()
    token = AdminToken.objects.get(name="ci")
    r = client.post(f"/admin-tokens/{token.pk}/revoke/", **HTMX)
    assert r.status_code == 200 and "revoked" in r.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_page_error_keeps_the_form(client: Client, admin) -> None:
    client.force_login(admin)
    r = client.post("/admin-tokens/", {"name": "ci", "scope": "write", "expires_days": "9999"}, **HTMX)
    assert r.status_code == 400
    html = r.content.decode()
    assert "at most 365 days" in html and 'value="ci"' in html and 'value="9999"' in html
    assert not AdminToken.objects.exists()


def test_page_is_for_admins(member_client: Client) -> None:
    assert member_client.get("/admin-tokens/").status_code == 403
    assert (
        member_client.post("/admin-tokens/", {"name": "x", "scope": "write", "expires_days": "1"}).status_code
        == 403
    )
