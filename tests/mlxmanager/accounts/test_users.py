"""Users: admins create people with a role, change roles, deactivate; nobody locks the
gateway out; members are refused; every change is audited. Real database, real client."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from mlxmanager.accounts import services
from mlxmanager.audit.models import AdminAction
from mlxmanager.errors import Conflict, DomainError

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-enough-password-9"


@pytest.fixture(autouse=True)
def _fast(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MLXM_AUDIT_FLUSH_INTERVAL = 0


@pytest.fixture
def boss():  # type: ignore[no-untyped-def]
    return get_user_model().objects.create_superuser(username="boss", password=PASSWORD)


def test_create_roles_and_guards(boss) -> None:  # type: ignore[no-untyped-def]
    alice = services.user_create(username="alice", password=PASSWORD, role="member")
    assert services.role_of(alice) == "member" and alice.check_password(PASSWORD)
    with pytest.raises(Conflict):
        services.user_create(username="alice", password=PASSWORD)
    with pytest.raises(DomainError) as exc:
        services.user_create(username="bob", password="short")
    assert exc.value.param == "password"
    with pytest.raises(DomainError):
        services.user_create(username="carol", password=PASSWORD, role="owner")
    # Nobody demotes or deactivates themselves; the last admin stays.
    with pytest.raises(Conflict, match="yourself"):
        services.user_update(user_id=boss.pk, role="member", actor=boss)
    with pytest.raises(Conflict, match="last active admin"):
        services.user_update(user_id=boss.pk, is_active=False, actor=alice)
    services.user_update(user_id=alice.pk, role="admin", actor=boss)
    services.user_update(user_id=boss.pk, role="member", actor=alice)  # now allowed: alice is admin
    assert services.role_of(get_user_model().objects.get(pk=boss.pk)) == "member"
    actions = list(AdminAction.objects.order_by("id").values_list("action", flat=True))
    assert actions.count("mlxmanager.user.created") >= 2 and "mlxmanager.user.changed" in actions
    assert PASSWORD not in str(list(AdminAction.objects.values()))


def test_users_api_for_admins_only(boss) -> None:  # type: ignore[no-untyped-def]
    api = Client(enforce_csrf_checks=True)
    api.force_login(boss)
    api.get("/keys/")
    csrf = {"X-CSRFToken": api.cookies["csrftoken"].value}
    made = api.post("/api/users/", {"username": "dan", "password": PASSWORD, "role": "member"},
                    content_type="application/json", headers=csrf)  # fmt: skip
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["role"] == "member" and body["is_active"] and "password" not in body
    off = api.patch(
        f"/api/users/{body['id']}", {"is_active": False}, content_type="application/json", headers=csrf
    )
    assert off.status_code == 200 and off.json()["is_active"] is False
    assert {u["username"] for u in api.get("/api/users/").json()} == {"boss", "dan"}
    member = get_user_model().objects.create_user(username="mo", password=PASSWORD)
    as_member = Client()
    as_member.force_login(member)
    refused = as_member.get("/api/users/")
    assert refused.status_code == 403 and refused["Content-Type"].startswith("application/problem+json")
    assert as_member.get("/users/").status_code == 403


def test_users_page(boss) -> None:  # type: ignore[no-untyped-def]
    c = Client()
    c.force_login(boss)
    page = c.get("/users/").content.decode()
    assert "<h1>Users</h1>" in page and "boss" in page and "(you)" in page
    made = c.post(
        "/users/", {"username": "eve", "password": PASSWORD, "role": "admin"}, HTTP_HX_REQUEST="true"
    )
    assert made.status_code == 200 and "Created eve (admin)." in made.content.decode()
    eve = get_user_model().objects.get(username="eve")
    refused = c.post(f"/users/{boss.pk}/", {"action": "deactivate", "confirm": "yes"}, HTTP_HX_REQUEST="true")
    assert refused.status_code == 400 and "yourself" in refused.content.decode()
    done = c.post(f"/users/{eve.pk}/", {"action": "make-member", "confirm": "yes"}, HTTP_HX_REQUEST="true")
    assert done.status_code == 200 and "Updated eve." in done.content.decode()
    assert not get_user_model().objects.get(pk=eve.pk).is_staff


@pytest.mark.parametrize(
    ("username", "password", "reason"),
    [
        ("pw3", "pw3pw3pw3", "username"),
        ("alice", "84736251", "numeric"),
        ("alice", "aaaabbbbaaaa", "different characters"),
        ("alice.smith", "alice.smith1", "similar"),
    ],
)
def test_weak_member_passwords_are_refused_everywhere(boss, username, password, reason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DomainError) as exc:
        services.user_create(username=username, password=password)
    assert exc.value.param == "password" and reason in exc.value.message
    c = Client()
    c.force_login(boss)
    api = c.post("/api/users/", {"username": username, "password": password, "role": "member"},
                 content_type="application/json")  # fmt: skip
    assert api.status_code == 400 and api.json()["param"] == "password"
    page = c.post(
        "/users/", {"username": username, "password": password, "role": "member"}, HTTP_HX_REQUEST="true"
    )
    assert page.status_code == 400 and reason in page.content.decode()
    assert not get_user_model().objects.filter(username=username).exists()


def test_admins_need_twelve_characters_members_eight(boss) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DomainError, match="12 characters") as exc:
        services.user_create(username="ann", password="Tq8#zLm2vX", role="admin")
    assert exc.value.param == "password"
    assert services.user_create(username="ann", password="Tq8#zLm2vX", role="member").check_password(
        "Tq8#zLm2vX"
    )
    assert services.user_create(username="ben", password="Tq8#zLm2vX!?", role="admin").is_staff
