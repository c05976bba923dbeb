"""The management API under /api/keys: session auth with CSRF, errors as problem+json."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from mlxmanager.accounts.models import ApiKey
from mlxmanager.accounts.services import api_key_create, hash_key

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"


class ApiClient:
    """A logged-in browser-like client: session cookie plus the CSRF token header."""

    def __init__(self, user) -> None:
        self.client = Client(enforce_csrf_checks=True)
        self.client.force_login(user)
        assert self.client.get("/login/").status_code in (200, 302)  # sets the csrftoken cookie
        self.client.get("/keys/")
        self.csrf = self.client.cookies["csrftoken"].value

    def get(self, path: str):
        return self.client.get(path)

    def post(self, path: str, body: object | None = None, *, csrf: bool = True):
        headers = {"X-CSRFToken": self.csrf} if csrf else {}
        if body is None:
            return self.client.post(path, headers=headers)
        return self.client.post(path, body, content_type="application/json", headers=headers)


@pytest.fixture
def api(member) -> ApiClient:
    return ApiClient(member)


def assert_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.content
    assert resp["Content-Type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert "detail" in body
    return body


# --- happy paths ---------------------------------------------------------------


def test_list_keys_is_empty_at_first(api: ApiClient) -> None:
    resp = api.get("/api/keys/")
    assert resp.status_code == 200
    assert resp.json() == []


def test_create_list_revoke(api: ApiClient, member) -> None:
    resp = api.post("/api/keys/", {"name": "laptop"})
    assert resp.status_code == 201, resp.content
    created = resp.json()
    secret = created["key"]
    assert secret.startswith("mlxm-")
    assert created["name"] == "laptop"
    assert secret.startswith(created["prefix"])
    assert created["revoked_at"] is None and created["expires_at"] is None
    assert "digest" not in created
    assert ApiKey.objects.get(pk=created["id"]).digest == hash_key(secret)

    listed = api.get("/api/keys/").json()
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and "digest" not in listed[0]  # the secret is shown only once
    assert secret not in api.get("/api/keys/").content.decode()

    resp = api.post(f"/api/keys/{created['id']}/revoke")
    assert resp.status_code == 200, resp.content
    assert resp.json()["revoked_at"] is not None
    assert api.get("/api/keys/").json()[0]["revoked_at"] is not None

    # Revoking twice is fine and keeps the first time.
    again = api.post(f"/api/keys/{created['id']}/revoke")
    assert again.status_code == 200
    assert again.json()["revoked_at"] == resp.json()["revoked_at"]


def test_create_with_expiry(api: ApiClient) -> None:
    when = (timezone.now() + timedelta(days=7)).replace(microsecond=0)
    resp = api.post("/api/keys/", {"name": "weekly", "expires_at": when.isoformat()})
    assert resp.status_code == 201, resp.content
    assert ApiKey.objects.get(pk=resp.json()["id"]).expires_at == when


def test_list_shows_only_own_keys(api: ApiClient, make_user) -> None:
    api_key_create(user=make_user(), name="theirs")
    assert api.get("/api/keys/").json() == []


# --- auth and CSRF -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/api/keys/"), ("post", "/api/keys/"), ("post", "/api/keys/1/revoke")],
)
def test_unauthenticated_is_a_401_problem(method: str, path: str) -> None:
    client = Client()
    if method == "post":
        resp = client.post(path, {"name": "x"}, content_type="application/json")
    else:
        resp = client.get(path)
    body = assert_problem(resp, 401)
    assert body["title"] == "Unauthorized"
    assert not ApiKey.objects.exists()


def test_post_without_csrf_is_refused(api: ApiClient) -> None:
    resp = api.post("/api/keys/", {"name": "laptop"}, csrf=False)
    assert 400 <= resp.status_code < 500
    assert resp["Content-Type"].startswith(PROBLEM)
    assert not ApiKey.objects.exists()


def test_revoke_without_csrf_is_refused(api: ApiClient, member) -> None:
    key, _ = api_key_create(user=member, name="laptop")
    resp = api.post(f"/api/keys/{key.pk}/revoke", csrf=False)
    assert 400 <= resp.status_code < 500
    key.refresh_from_db()
    assert key.revoked_at is None


def test_post_with_a_wrong_csrf_token_is_refused(api: ApiClient) -> None:
    api.csrf = "x" * 64
    resp = api.post("/api/keys/", {"name": "laptop"})
    assert 400 <= resp.status_code < 500
    assert not ApiKey.objects.exists()


def test_an_api_key_is_not_a_session(member) -> None:
    """The management API is for the logged-in UI; a bearer key does not log in."""
    _, secret = api_key_create(user=member, name="laptop")
    resp = Client().get("/api/keys/", headers={"Authorization": f"Bearer {secret}"})
    assert_problem(resp, 401)


# --- bad requests --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [{}, {"name": 123}, {"name": "ok", "expires_at": "not a date"}, ["name"]],
    ids=["missing-name", "name-not-a-string", "bad-date", "not-an-object"],
)
def test_bad_body_is_a_400_problem(api: ApiClient, body: object) -> None:
    body = assert_problem(api.post("/api/keys/", body), 400)
    assert body["title"] == "Invalid request"
    assert body["errors"]
    assert not ApiKey.objects.exists()


def test_malformed_json_is_a_400_problem(api: ApiClient) -> None:
    resp = api.client.post(
        "/api/keys/", "{not json", content_type="application/json", headers={"X-CSRFToken": api.csrf}
    )
    assert_problem(resp, 400)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (rb'{"name": "\ud800"}', "name"),
        (b'{"name": "k\xed\xa0\x80"}', "name"),  # the same surrogate as (invalid) UTF-8 bytes
        (rb'{"name": "ok", "allowed_models": ["m", "\udfff"]}', "allowed_models.1"),
    ],
    ids=["escape", "utf8-bytes", "in-a-list"],
)
def test_invalid_unicode_is_a_400_problem_naming_the_field(api: ApiClient, raw: bytes, param: str) -> None:
    """A lone surrogate cannot be stored (nor encoded as UTF-8): a 400, not a 500 at the INSERT."""
    resp = api.client.post(
        "/api/keys/", raw, content_type="application/json", headers={"X-CSRFToken": api.csrf}
    )
    problem = assert_problem(resp, 400)
    assert problem["param"] == param
    assert problem["title"] == "Invalid request"
    assert "invalid Unicode" in problem["detail"] and param in problem["detail"]
    assert [e["loc"][-len(param.split(".")) :] for e in problem["errors"]] == [
        [int(x) if x.isdigit() else x for x in param.split(".")]
    ]
    resp.content.decode("utf-8")  # the answer itself is valid UTF-8
    assert not ApiKey.objects.exists()


def test_invalid_unicode_is_refused_on_every_management_body(admin) -> None:
    """The check is the management API's JSON parser: every body, not only the keys'."""
    api = ApiClient(admin)
    resp = api.client.post(
        "/api/users/", rb'{"username": "\ud800", "password": "a-long-password-42"}',
        content_type="application/json", headers={"X-CSRFToken": api.csrf},
    )  # fmt: skip
    assert assert_problem(resp, 400)["param"] == "username"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "  "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "old", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "forever", "expires_at": "9999-12-31T23:59:59Z"}, "expires_at"),
        ({"name": "naive", "expires_at": "9999-12-31T23:59:59"}, "expires_at"),
    ],
    ids=["blank-name", "long-name", "past-expiry", "expiry-year-9999", "naive-expiry-year-9999"],
)
def test_domain_errors_are_400_problems_with_the_param(api: ApiClient, body: dict, param: str) -> None:
    problem = assert_problem(api.post("/api/keys/", body), 400)
    assert problem["param"] == param
    assert problem["detail"]
    assert not ApiKey.objects.exists()


def test_expiry_is_capped_like_on_the_keys_page(api: ApiClient) -> None:
    """The keys page caps the expiry at MAX_EXPIRY_DAYS (3,650) days; /api holds to the same."""
    problem = assert_problem(
        api.post("/api/keys/", {"name": "far", "expires_at": "9999-01-01T00:00:00Z"}), 400
    )
    assert "3650 days" in problem["detail"]
    near = timezone.now() + timedelta(days=3649)
    assert api.post("/api/keys/", {"name": "near", "expires_at": near.isoformat()}).status_code == 201
    # An expiry without a time zone is read as UTC (not a 500 comparing naive and aware times).
    naive = (timezone.now() + timedelta(days=7)).replace(tzinfo=None).isoformat()
    assert api.post("/api/keys/", {"name": "naive", "expires_at": naive}).status_code == 201


def test_revoke_unknown_is_a_404_problem(api: ApiClient) -> None:
    problem = assert_problem(api.post("/api/keys/999999/revoke"), 404)
    assert problem["title"] == "Not found"
    assert problem["instance"] == "/api/keys/999999/revoke"


def test_revoke_someone_elses_key_is_a_404_problem(api: ApiClient, make_user) -> None:
    key, _ = api_key_create(user=make_user(), name="theirs")
    assert_problem(api.post(f"/api/keys/{key.pk}/revoke"), 404)
    key.refresh_from_db()
    assert key.revoked_at is None


def test_admin_can_revoke_anyones_key_through_the_api(admin, member) -> None:
    key, _ = api_key_create(user=member, name="laptop")
    resp = ApiClient(admin).post(f"/api/keys/{key.pk}/revoke")
    assert resp.status_code == 200
    key.refresh_from_db()
    assert key.revoked_at is not None
