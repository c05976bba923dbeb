"""Login throttling through the real login page (Django's test client, real database)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client

from mlxmanager.accounts import forms

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _setup(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    get_user_model().objects.create_user(username="alice", password="right-password-123")


def login(client: Client, password: str, username: str = "alice", ip: str = "10.0.0.1"):  # type: ignore[no-untyped-def]
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_five_failures_lock_the_pair_even_with_the_right_password() -> None:
    c = Client()
    for _ in range(forms.MAX_FAILURES):
        resp = login(c, "wrong")
        assert resp.status_code == 200 and "Too many" not in resp.content.decode()
    locked = login(c, "right-password-123")
    assert locked.status_code == 200
    assert "Too many failed attempts for this account from your address. Try again in 15 minutes." in (
        locked.content.decode()
    )
    # Another address, or another username from this one, is not locked.
    assert login(Client(), "right-password-123", ip="10.0.0.2").status_code == 302
    assert "Too many" not in login(c, "wrong", username="bob").content.decode()


def test_a_success_clears_the_count() -> None:
    c = Client()
    for _ in range(forms.MAX_FAILURES - 1):
        login(c, "wrong")
    assert login(c, "right-password-123").status_code == 302
    c.logout()
    for _ in range(forms.MAX_FAILURES - 1):
        login(c, "wrong")
    assert login(c, "right-password-123").status_code == 302
