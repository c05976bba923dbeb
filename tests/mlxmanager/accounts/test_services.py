from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from mlxmanager.accounts.models import ApiKey
from mlxmanager.accounts.services import (
    KEY_PREFIX,
    api_key_create,
    api_key_revoke,
    hash_key,
    user_create_admin,
)
from mlxmanager.errors import Conflict, DomainError, NotFound

pytestmark = pytest.mark.django_db


def _all_db_text() -> list[str]:
    """Every non-null value of every column of every table, as text."""
    values: list[str] = []
    with connection.cursor() as cur:
        for table in connection.introspection.table_names(cur):
            cur.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            for row in cur.fetchall():
                values.extend(str(v) for v in row if v is not None)
    return values


# --- user_create_admin ---------------------------------------------------------


def test_create_admin_makes_a_superuser_with_a_hashed_password() -> None:
    user = user_create_admin(username="  alice ", password="correct-horse-battery", email="a@example.com")
    assert user.username == "alice"
    assert user.is_staff and user.is_superuser and user.is_active
    assert user.check_password("correct-horse-battery")
    assert user.password != "correct-horse-battery"


@pytest.mark.parametrize(
    "password",
    [
        "short",  # MinimumLengthValidator
        "password123",  # CommonPasswordValidator
    ],
)
def test_create_admin_refuses_weak_passwords(password: str) -> None:
    with pytest.raises(DomainError) as exc:
        user_create_admin(username="alice", password=password)
    assert exc.value.param == "password"
    assert exc.value.status == 400
    assert exc.value.message  # a human readable reason
    assert not get_user_model().objects.filter(username="alice").exists()


def test_create_admin_refuses_an_empty_username() -> None:
    with pytest.raises(DomainError) as exc:
        user_create_admin(username="   ", password="correct-horse-battery")
    assert exc.value.param == "username"


def test_create_admin_refuses_a_duplicate(make_user) -> None:
    make_user(username="alice")
    with pytest.raises(Conflict) as exc:
        user_create_admin(username="alice", password="correct-horse-battery")
    assert exc.value.param == "username"
    assert exc.value.status == 409
    assert get_user_model().objects.filter(username="alice").count() == 1


# --- api_key_create ------------------------------------------------------------


def test_create_key_returns_a_secret_stored_only_as_a_digest(member) -> None:
    key, secret = api_key_create(user=member, name=" laptop ")

    assert secret.startswith(KEY_PREFIX)
    assert len(secret) > len(KEY_PREFIX) + 40  # 256 random bits
    assert key.name == "laptop"
    assert key.user == member
    assert key.digest == hashlib.sha256(secret.encode()).hexdigest() == hash_key(secret)
    assert secret.startswith(key.prefix) and len(key.prefix) < len(secret)
    assert key.revoked_at is None and key.expires_at is None and key.last_used_at is None

    stored = _all_db_text()
    assert key.digest in stored
    assert not [v for v in stored if secret in v], "the secret must never be stored"


def test_create_key_secrets_are_unique(member) -> None:
    secrets = {api_key_create(user=member, name=f"k{i}")[1] for i in range(5)}
    assert len(secrets) == 5


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_create_key_refuses_bad_names(member, name: str) -> None:
    with pytest.raises(DomainError) as exc:
        api_key_create(user=member, name=name)
    assert exc.value.param == "name"
    assert not ApiKey.objects.exists()


def test_create_key_accepts_a_name_of_100_characters(member) -> None:
    key, _ = api_key_create(user=member, name="x" * 100)
    assert len(key.name) == 100


def test_create_key_refuses_an_expiry_in_the_past(member) -> None:
    with pytest.raises(DomainError) as exc:
        api_key_create(user=member, name="old", expires_at=timezone.now() - timedelta(minutes=1))
    assert exc.value.param == "expires_at"
    assert not ApiKey.objects.exists()


def test_create_key_accepts_an_expiry_in_the_future(member) -> None:
    when = timezone.now() + timedelta(days=30)
    key, _ = api_key_create(user=member, name="monthly", expires_at=when)
    key.refresh_from_db()
    assert key.expires_at == when


# --- api_key_revoke ------------------------------------------------------------


def test_revoke_own_key(member) -> None:
    key, _ = api_key_create(user=member, name="laptop")
    revoked = api_key_revoke(user=member, key_id=key.pk)
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert revoked.revoked_at == key.revoked_at
    assert not key.is_active()


def test_member_cannot_revoke_someone_elses_key(make_user) -> None:
    alice, bob = make_user(), make_user()
    key, _ = api_key_create(user=alice, name="alice's")
    with pytest.raises(NotFound):
        api_key_revoke(user=bob, key_id=key.pk)
    key.refresh_from_db()
    assert key.revoked_at is None


def test_admin_can_revoke_anyones_key(member, admin) -> None:
    key, _ = api_key_create(user=member, name="laptop")
    api_key_revoke(user=admin, key_id=key.pk)
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_revoke_unknown_key(admin) -> None:
    with pytest.raises(NotFound) as exc:
        api_key_revoke(user=admin, key_id=999_999)
    assert exc.value.status == 404


def test_revoke_is_idempotent(member) -> None:
    key, _ = api_key_create(user=member, name="laptop")
    first = timezone.now() - timedelta(hours=1)
    api_key_revoke(user=member, key_id=key.pk, now=first)
    again = api_key_revoke(user=member, key_id=key.pk)
    key.refresh_from_db()
    assert key.revoked_at == first == again.revoked_at


@pytest.mark.django_db
def test_passwords_are_hashed_with_argon2id_and_old_hashes_upgrade(settings) -> None:  # type: ignore[no-untyped-def]
    from django.contrib.auth import authenticate, get_user_model
    from django.contrib.auth.hashers import make_password

    from mlxmanager import settings as project_settings

    # pytest-django swaps in a fast MD5 hasher for the suite; this test checks the real list.
    settings.PASSWORD_HASHERS = project_settings.PASSWORD_HASHERS

    User = get_user_model()
    user = User.objects.create_user("hashy", password="correct-horse-battery")
    assert user.password.startswith("argon2$argon2id$")
    # A PBKDF2 hash (an older install) still logs in, and is rehashed with Argon2 on the way.
    User.objects.filter(pk=user.pk).update(
        password=make_password("another-long-secret", hasher="pbkdf2_sha256")
    )
    assert authenticate(username="hashy", password="another-long-secret") is not None
    user.refresh_from_db()
    assert user.password.startswith("argon2$argon2id$")


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("pw3", "pw3pw3pw3"),  # the username, repeated
        ("alice", "84736251"),  # all digits
        ("alice", "xAlice-2025-x"),  # contains the username
        ("alice", "Tq8#zLm2vXw"),  # strong but 11 characters: admins need 12
    ],
)
def test_create_admin_refuses_guessable_or_short_passwords(username: str, password: str) -> None:
    with pytest.raises(DomainError) as exc:
        user_create_admin(username=username, password=password)
    assert exc.value.param == "password" and exc.value.message
    assert not get_user_model().objects.filter(username=username).exists()


def test_create_admin_accepts_a_twelve_character_password() -> None:
    assert user_create_admin(username="alice", password="Tq8#zLm2vXw!").check_password("Tq8#zLm2vXw!")
