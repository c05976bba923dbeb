"""Password lifecycle (issue 18 item 9): change your own, admin resets (one-time link,
temporary password that must be changed), the confirm step before role changes and
deactivation, and the users form keeping its values. Real database, real client, real views."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from mlxmanager.accounts import passwords
from mlxmanager.accounts.models import PasswordChangeRequired
from mlxmanager.audit.models import AdminAction
from mlxmanager.errors import Conflict, NotFound
from tests.mlxmanager.accounts.conftest import PASSWORD

pytestmark = pytest.mark.django_db
NEW = "granite-orbit-71-lantern"


def _logged_in(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


def test_change_your_own_password(member: Any) -> None:
    c = _logged_in(member)
    page = c.get("/password/")
    assert page.status_code == 200 and "Current password" in page.content.decode()
    wrong = c.post("/password/", {"old_password": "nope", "new_password1": NEW, "new_password2": NEW})
    assert wrong.status_code == 400 and "old password was entered incorrectly" in wrong.content.decode()
    weak = c.post(
        "/password/", {"old_password": PASSWORD, "new_password1": "member12", "new_password2": "member12"}
    )
    html = weak.content.decode()
    assert weak.status_code == 400 and "must not contain the username" in html
    assert PASSWORD not in html and "member12" not in html  # passwords are never sent back
    differ = c.post(
        "/password/", {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW + "x"}
    )
    assert differ.status_code == 400 and "didn’t match" in differ.content.decode()
    member.refresh_from_db()
    assert member.check_password(PASSWORD)
    other = _logged_in(member)
    ok = c.post("/password/", {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW})
    assert ok.status_code == 200 and 'id="password-changed"' in ok.content.decode()
    member.refresh_from_db()
    assert member.check_password(NEW)
    assert c.get("/keys/").status_code == 200  # this session stays signed in
    assert other.get("/keys/").status_code == 302  # the other one is signed out
    assert AdminAction.objects.filter(action="mlxmanager.user.changed", data__password="(changed)").exists()


def test_admins_need_twelve_characters_for_their_own_new_password(admin: Any) -> None:
    c = _logged_in(admin)
    r = c.post(
        "/password/", {"old_password": PASSWORD, "new_password1": "Qz7-lamp!", "new_password2": "Qz7-lamp!"}
    )
    assert r.status_code == 400 and "12" in r.content.decode()


def test_password_page_needs_sign_in(client: Client) -> None:
    assert client.get("/password/").status_code == 302


def test_reset_with_a_one_time_link(admin: Any, member: Any) -> None:
    c = _logged_in(admin)
    ask = c.post(f"/users/{member.pk}/", {"action": "reset-link"})
    assert (
        ask.status_code == 200
        and "one-time link" in ask.content.decode()
        and 'name="confirm"' in ask.content.decode()
    )
    assert not AdminAction.objects.filter(action="mlxmanager.user.password_reset").exists()
    done = c.post(f"/users/{member.pk}/", {"action": "reset-link", "confirm": "yes"})
    html = done.content.decode()
    assert done.status_code == 200 and done["Cache-Control"] == "no-store"
    link = html.split('id="reset-secret">')[1].split("<")[0]
    assert link.startswith("http://testserver/password/reset/")
    member.refresh_from_db()
    assert member.check_password(PASSWORD)  # the old password works until the link is used
    entry = AdminAction.objects.get(action="mlxmanager.user.password_reset")
    assert entry.actor_name == admin.username and entry.data == {"method": "one-time link"}
    assert link.split("/")[-2] not in str(entry.data)

    anon = Client()
    form = anon.get(link.removeprefix("http://testserver"), follow=True)
    assert form.status_code == 200 and "Choose a new password" in form.content.decode()
    set_url = form.redirect_chain[-1][0]
    weak = anon.post(set_url, {"new_password1": "12345678", "new_password2": "12345678"})
    assert weak.status_code == 400 and "entirely numeric" in weak.content.decode()
    ok = anon.post(set_url, {"new_password1": NEW, "new_password2": NEW}, follow=True)
    assert ok.status_code == 200 and "Password set" in ok.content.decode()
    member.refresh_from_db()
    assert member.check_password(NEW)
    again = Client().get(link.removeprefix("http://testserver"), follow=True)  # one time only
    assert 'id="invalid-link"' in again.content.decode()


def test_reset_with_a_temporary_password_that_must_be_changed(admin: Any, member: Any) -> None:
    before = _logged_in(member)
    c = _logged_in(admin)
    done = c.post(f"/users/{member.pk}/", {"action": "reset-temporary", "confirm": "yes"})
    temp = done.content.decode().split('id="reset-secret">')[1].split("<")[0]
    assert done.status_code == 200 and len(temp) == 16
    member.refresh_from_db()
    assert member.check_password(temp) and not member.check_password(PASSWORD)
    assert PasswordChangeRequired.objects.filter(user=member).exists()
    assert before.get("/keys/").status_code == 302  # their sessions ended
    entry = AdminAction.objects.get(action="mlxmanager.user.password_reset")
    assert entry.data == {"method": "temporary password"} and temp not in str(
        list(AdminAction.objects.values())
    )

    m = Client()
    signed_in = m.post("/login/", {"username": "member", "password": temp}, follow=True)
    assert signed_in.redirect_chain[-1][0] == "/password/"
    assert "temporary password" in signed_in.content.decode()
    stuck = m.get("/keys/")
    assert stuck.status_code == 302 and stuck["Location"] == "/password/"
    api = m.get("/api/keys/")
    assert api.status_code == 403 and api["Content-Type"] == "application/problem+json"
    assert "/password/" in api.json()["detail"]
    assert m.get("/password/").status_code == 200
    ok = m.post("/password/", {"old_password": temp, "new_password1": NEW, "new_password2": NEW})
    assert ok.status_code == 200 and 'id="password-changed"' in ok.content.decode()
    assert not PasswordChangeRequired.objects.filter(user=member).exists()
    assert m.get("/keys/").status_code == 200


def test_resets_refuse_yourself_unknown_users_and_methods(admin: Any, member: Any) -> None:
    with pytest.raises(Conflict, match="your own password"):
        passwords.password_reset(user_id=admin.pk, method="link", actor=admin)
    with pytest.raises(NotFound):
        passwords.password_reset(user_id=10**6, method="link", actor=admin)
    with pytest.raises(Conflict):
        passwords.password_reset(user_id=member.pk, method="email", actor=admin)
    c = _logged_in(admin)
    self_reset = c.post(f"/users/{admin.pk}/", {"action": "reset-temporary", "confirm": "yes"})
    assert self_reset.status_code == 400 and "your own password" in self_reset.content.decode()
    missing = c.post("/users/999999/", {"action": "deactivate"})
    assert missing.status_code == 404 and "no such user" in missing.content.decode()
    unknown = c.post(f"/users/{member.pk}/", {"action": "explode"})
    assert unknown.status_code == 400 and "unknown action" in unknown.content.decode()


def test_temporary_passwords_pass_the_validators_of_their_user(make_user: Any) -> None:
    from django.contrib.auth.password_validation import validate_password

    short = make_user(username="abc", admin=True)
    for _ in range(50):
        validate_password(passwords.temporary_password(short), user=short)


@pytest.mark.parametrize(
    ("action", "words", "field", "value"),
    [
        ("deactivate", "Deactivate member?", "is_active", False),
        ("make-admin", "Make member an admin?", "is_staff", True),
    ],
)
def test_role_changes_and_deactivation_ask_first(
    admin: Any, member: Any, action: str, words: str, field: str, value: bool
) -> None:
    c = _logged_in(admin)
    ask = c.post(f"/users/{member.pk}/", {"action": action})
    html = ask.content.decode()
    assert ask.status_code == 200 and words in html and 'value="yes"' in html and 'href="/users/"' in html
    member.refresh_from_db()
    assert getattr(member, field) != value  # nothing changed yet
    done = c.post(f"/users/{member.pk}/", {"action": action, "confirm": "yes"})
    assert done.status_code == 200 and "Updated member." in done.content.decode()
    member.refresh_from_db()
    assert getattr(member, field) == value


def test_activating_needs_no_confirmation(admin: Any, make_user: Any) -> None:
    gone = make_user(username="gone", is_active=False)
    done = _logged_in(admin).post(f"/users/{gone.pk}/", {"action": "activate"})
    assert done.status_code == 200 and get_user_model().objects.get(pk=gone.pk).is_active


def test_the_users_form_keeps_its_values_after_an_error(admin: Any) -> None:
    r = _logged_in(admin).post("/users/", {"username": "zed", "password": "short", "role": "admin"})
    html = r.content.decode()
    assert r.status_code == 400 and 'value="zed"' in html and '<option value="admin" selected>' in html
    assert 'value="short"' not in html


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_async_stack_sends_a_temporary_password_to_the_password_page() -> None:
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    def seed() -> Any:
        user = get_user_model().objects.create_user(username="tess", password=PASSWORD)
        PasswordChangeRequired.objects.create(user=user)
        return user

    client = AsyncClient()
    await client.aforce_login(await sync_to_async(seed)())
    stuck = await client.get("/keys/")
    assert stuck.status_code == 302 and stuck["Location"] == "/password/"
    api = await client.get("/api/keys/")
    assert api.status_code == 403 and "temporary password" in api.json()["detail"]
    assert (await client.get("/password/")).status_code == 200
