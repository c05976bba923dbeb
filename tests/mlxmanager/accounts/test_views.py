from __future__ import annotations

import json
import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from mlxmanager.accounts.models import ApiKey
from mlxmanager.accounts.services import api_key_create, api_key_revoke
from mlxmanager.profiles.models import Profile
from tests.mlxmanager.accounts.conftest import PASSWORD

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def _secret_in(html: str) -> str | None:
    m = re.search(r'<pre id="new-key">([^<]+)</pre>', html)
    return m.group(1) if m else None


# --- login / logout ------------------------------------------------------------


def test_login_page_renders(client: Client) -> None:
    resp = client.get("/login/")
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "<h1>Log in</h1>" in html
    assert 'name="username"' in html and 'name="password"' in html
    assert "csrfmiddlewaretoken" in html
    assert 'role="alert"' not in html


def test_wrong_password_shows_the_error(client: Client, member) -> None:
    resp = client.post("/login/", {"username": "member", "password": "nope"})
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "didn&#x27;t match" in html or "didn't match" in html
    assert 'value="member"' in html  # the username is kept
    assert "_auth_user_id" not in client.session


def test_login_redirects_to_home(client: Client, member) -> None:
    resp = client.post("/login/", {"username": "member", "password": PASSWORD})
    assert resp.status_code == 302
    assert resp["Location"] == reverse("home")
    assert client.session["_auth_user_id"] == str(member.pk)


def test_login_honours_next(client: Client, member) -> None:
    resp = client.post("/login/", {"username": "member", "password": PASSWORD, "next": "/keys/"})
    assert resp.status_code == 302
    assert resp["Location"] == "/keys/"


def test_login_ignores_an_offsite_next(client: Client, member) -> None:
    resp = client.post(
        "/login/", {"username": "member", "password": PASSWORD, "next": "https://evil.example/"}
    )
    assert resp.status_code == 302
    assert resp["Location"] == reverse("home")


def test_logged_in_user_visiting_login_goes_home(member_client: Client) -> None:
    resp = member_client.get("/login/")
    assert resp.status_code == 302
    assert resp["Location"] == reverse("home")


@pytest.mark.parametrize("path", ["/", "/keys/"])
def test_pages_need_login(client: Client, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 302
    assert resp["Location"].startswith("/login/")
    assert f"next={path}" in resp["Location"].replace("%2F", "/")


def test_revoke_needs_login(client: Client, member) -> None:
    key, _ = api_key_create(user=member, name="laptop")
    resp = client.post(f"/keys/{key.pk}/revoke/")
    assert resp.status_code == 302
    assert resp["Location"].startswith("/login/")
    key.refresh_from_db()
    assert key.revoked_at is None


def test_logout_via_post(member_client: Client) -> None:
    resp = member_client.post("/logout/")
    assert resp.status_code == 302
    assert resp["Location"] == reverse("login")
    assert "_auth_user_id" not in member_client.session
    assert member_client.get("/").status_code == 302


def test_logout_via_get_is_refused(member_client: Client) -> None:
    assert member_client.get("/logout/").status_code == 405
    assert "_auth_user_id" in member_client.session


# --- home: tests/mlxmanager/home (an async view, driven through the async stack) ---------


# --- keys page -----------------------------------------------------------------


def test_keys_page_lists_only_own_keys(member_client: Client, member, make_user) -> None:
    api_key_create(user=member, name="mine")
    api_key_create(user=make_user(), name="someone-elses")
    html = member_client.get("/keys/").content.decode()
    assert "mine" in html
    assert "someone-elses" not in html
    assert _secret_in(html) is None


def test_create_key_shows_the_secret_once(member_client: Client, member) -> None:
    resp = member_client.post("/keys/", {"name": "laptop"})
    assert resp.status_code == 200
    html = resp.content.decode()
    secret = _secret_in(html)
    assert secret and secret.startswith("mlxm-")
    assert "<html" in html  # a full page for a plain POST

    key = ApiKey.objects.get(user=member)
    assert key.name == "laptop"
    assert secret.startswith(key.prefix)

    again = member_client.get("/keys/").content.decode()
    assert "laptop" in again
    assert _secret_in(again) is None
    assert secret not in again


def test_create_key_with_htmx_returns_only_the_panel(member_client: Client) -> None:
    resp = member_client.post("/keys/", {"name": "laptop"}, **HTMX)
    assert resp.status_code == 200
    html = resp.content.decode()
    assert 'id="keys-panel"' in html
    assert "<html" not in html
    assert "<h1>" not in html
    assert _secret_in(html)


@pytest.mark.parametrize("htmx", [False, True], ids=["plain", "htmx"])
def test_create_key_with_an_empty_name_is_a_400_with_a_message(member_client: Client, htmx: bool) -> None:
    resp = member_client.post("/keys/", {"name": "   "}, **(HTMX if htmx else {}))
    assert resp.status_code == 400
    html = resp.content.decode()
    assert 'role="alert"' in html
    assert "a key needs a name" in html
    assert _secret_in(html) is None
    assert not ApiKey.objects.exists()


def test_create_key_with_a_missing_name_is_a_400(member_client: Client) -> None:
    resp = member_client.post("/keys/", {})
    assert resp.status_code == 400
    assert "a key needs a name" in resp.content.decode()


def test_keys_page_refuses_other_methods(member_client: Client) -> None:
    assert member_client.delete("/keys/").status_code == 405


def test_keys_page_escapes_key_names(member_client: Client) -> None:
    html = member_client.post("/keys/", {"name": "<script>alert(1)</script>"}).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


def test_revoke_via_post_marks_it_revoked(member_client: Client, member) -> None:
    key, _ = api_key_create(user=member, name="laptop")
    resp = member_client.post(f"/keys/{key.pk}/revoke/")
    assert resp.status_code == 302
    assert resp["Location"] == reverse("keys")
    key.refresh_from_db()
    assert key.revoked_at is not None

    html = member_client.get("/keys/").content.decode()
    assert 'badge warn">revoked' in html
    assert f"/keys/{key.pk}/revoke/" not in html  # no revoke button on a revoked key


def test_revoke_with_htmx_returns_the_panel(member_client: Client, member) -> None:
    key, _ = api_key_create(user=member, name="laptop")
    resp = member_client.post(f"/keys/{key.pk}/revoke/", **HTMX)
    assert resp.status_code == 200
    html = resp.content.decode()
    assert 'id="keys-panel"' in html and "<html" not in html
    assert "revoked" in html


def test_revoke_someone_elses_key_is_a_404(member_client: Client, make_user) -> None:
    key, _ = api_key_create(user=make_user(), name="theirs")
    resp = member_client.post(f"/keys/{key.pk}/revoke/")
    assert resp.status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None


def test_revoke_via_get_is_refused(member_client: Client, member) -> None:
    key, _ = api_key_create(user=member, name="laptop")
    assert member_client.get(f"/keys/{key.pk}/revoke/").status_code == 405
    key.refresh_from_db()
    assert key.revoked_at is None


def test_pages_need_csrf(member) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(member)
    assert client.post("/keys/", {"name": "laptop"}).status_code == 403
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("htmx", [False, True], ids=["page", "htmx"])
def test_keys_page_queries_do_not_grow_with_the_number_of_keys(
    member_client: Client, member, django_assert_max_num_queries, htmx: bool
) -> None:
    headers = HTMX if htmx else {}

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert member_client.get("/keys/", **headers).status_code == 200
        return len(ctx.captured_queries)

    api_key_create(user=member, name="k0")
    # session, user, keys, their usage (one aggregate), the model choices (profiles, rules), the
    # budgets near their limit (one query)
    with django_assert_max_num_queries(7):
        member_client.get("/keys/", **headers)
    one = count_queries()

    for i in range(1, 20):
        key, _ = api_key_create(user=member, name=f"k{i}")
        if i % 3 == 0:
            api_key_revoke(user=member, key_id=key.pk)
    with django_assert_max_num_queries(one):
        html = member_client.get("/keys/", **headers).content.decode()
    assert html.count("<tr") == 21  # header + 20 keys


def test_htmx_swaps_400_responses(member_client: Client) -> None:
    """Forms answer a bad submission with a 400 and the panel; htmx must swap it in."""
    html = member_client.get("/keys/").content.decode()
    m = re.search(r"<meta name=\"htmx-config\" content='([^']+)'>", html)
    assert m, "base.html configures htmx"
    rules = json.loads(m.group(1))["responseHandling"]
    first_match = next(r for r in rules if re.search(r["code"], "400"))
    assert first_match["swap"] is True
    assert next(r for r in rules if re.search(r["code"], "500"))["swap"] is False


def test_create_key_with_limits_from_the_form(member_client: Client, member) -> None:
    for name in ("tiny-random", "smollm2"):
        Profile.objects.create(name=name, model_path="/models/" + name)
    resp = member_client.post(
        "/keys/",
        {"name": "ci", "expires_days": "30", "allowed_models": ["tiny-random", "smollm2"], "rpm_limit": "60",
         "tokens_per_day": "1000"},
        **HTMX,
    )  # fmt: skip
    assert resp.status_code == 200, resp.content
    key = ApiKey.objects.get(user=member, name="ci")
    assert key.allowed_models == ["tiny-random", "smollm2"] and (key.rpm_limit, key.tokens_per_day) == (
        60,
        1000,
    )
    assert key.expires_at is not None
    assert "models: tiny-random, smollm2" in resp.content.decode()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("expires_days", "10000000000", "at most 3650 days"),
        ("expires_days", "-1", "more than 0"),
        ("expires_days", "soon", "must be a whole number"),
        ("rpm_limit", "0", "positive whole number"),
        ("tokens_per_day", "1.5", "must be a whole number"),
    ],
)
def test_bad_key_limits_are_a_400_with_a_message(
    member_client: Client, field: str, value: str, message: str
) -> None:
    resp = member_client.post("/keys/", {"name": "x", field: value}, **HTMX)
    assert resp.status_code == 400 and message in resp.content.decode()
    assert not ApiKey.objects.filter(name="x").exists()
