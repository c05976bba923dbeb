from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from mlxmanager.accounts.models import ApiKey
from mlxmanager.accounts.selectors import api_key_authenticate, api_key_list, users_exist
from mlxmanager.accounts.services import api_key_create, api_key_revoke

# The async ORM runs queries on another thread, so the async tests use a transactional
# database (data really committed) rather than the per-test transaction.
create_key = sync_to_async(api_key_create)


# --- sync selectors ------------------------------------------------------------


@pytest.mark.django_db
def test_users_exist(make_user) -> None:
    assert users_exist() is False
    make_user()
    assert users_exist() is True


@pytest.mark.django_db
def test_api_key_list_shows_only_the_users_keys_newest_first(make_user) -> None:
    alice, bob = make_user(), make_user()
    old, _ = api_key_create(user=alice, name="old")
    ApiKey.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=1))
    new, _ = api_key_create(user=alice, name="new")
    api_key_create(user=bob, name="bob's")
    assert [k.name for k in api_key_list(user=alice)] == ["new", "old"]


# --- api_key_authenticate ------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_right_key_gives_the_key_with_its_user(make_user) -> None:
    user = await sync_to_async(make_user)()
    key, secret = await create_key(user=user, name="laptop")

    found = await api_key_authenticate(secret)

    assert found is not None
    assert found.pk == key.pk
    # The user is loaded with the key (no lazy query from async code).
    assert "user" in found._state.fields_cache
    assert found.user.pk == user.pk


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "mlxm-not-a-real-key",
        "wrong",
        "mlxm-" + "a" * 300,  # overlong: refused before hashing
    ],
    ids=["empty", "unknown", "no-prefix", "overlong"],
)
@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_wrong_keys_give_none(make_user, secret: str) -> None:
    user = await sync_to_async(make_user)()
    await create_key(user=user, name="laptop")
    assert await api_key_authenticate(secret) is None


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_key_with_a_changed_character_gives_none(make_user) -> None:
    user = await sync_to_async(make_user)()
    _, secret = await create_key(user=user, name="laptop")
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert await api_key_authenticate(tampered) is None
    assert await api_key_authenticate(secret + " ") is None


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_revoked_key_gives_none(make_user) -> None:
    user = await sync_to_async(make_user)()
    key, secret = await create_key(user=user, name="laptop")
    await sync_to_async(api_key_revoke)(user=user, key_id=key.pk)
    assert await api_key_authenticate(secret) is None


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_expired_key_gives_none(make_user) -> None:
    user = await sync_to_async(make_user)()
    key, secret = await create_key(user=user, name="laptop")
    key.expires_at = timezone.now() - timedelta(seconds=1)
    await key.asave(update_fields=["expires_at"])
    assert await api_key_authenticate(secret) is None


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_key_expiring_later_still_works(make_user) -> None:
    user = await sync_to_async(make_user)()
    _, secret = await create_key(user=user, name="laptop", expires_at=timezone.now() + timedelta(hours=1))
    assert await api_key_authenticate(secret) is not None


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_inactive_user_gives_none(make_user) -> None:
    user = await sync_to_async(make_user)()
    _, secret = await create_key(user=user, name="laptop")
    user.is_active = False
    await user.asave(update_fields=["is_active"])
    assert await api_key_authenticate(secret) is None


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_last_used_at_is_set(make_user) -> None:
    user = await sync_to_async(make_user)()
    key, secret = await create_key(user=user, name="laptop")
    assert key.last_used_at is None

    before = timezone.now()
    found = await api_key_authenticate(secret)
    assert found is not None

    await key.arefresh_from_db()
    assert key.last_used_at is not None
    assert before <= key.last_used_at <= timezone.now()
    assert found.last_used_at == key.last_used_at


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_last_used_at_is_written_at_most_once_a_minute(make_user) -> None:
    user = await sync_to_async(make_user)()
    key, secret = await create_key(user=user, name="laptop")

    recent = timezone.now() - timedelta(seconds=5)
    await ApiKey.objects.filter(pk=key.pk).aupdate(last_used_at=recent)
    await api_key_authenticate(secret)
    await key.arefresh_from_db()
    assert key.last_used_at == recent  # not rewritten on the hot path

    stale = timezone.now() - timedelta(minutes=5)
    await ApiKey.objects.filter(pk=key.pk).aupdate(last_used_at=stale)
    await api_key_authenticate(secret)
    await key.arefresh_from_db()
    assert key.last_used_at > stale
