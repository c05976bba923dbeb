"""Fixtures for admin-only pages and APIs: an admin, a member, logged-in clients.
Import them into a conftest to use them."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.test import Client


@pytest.fixture(autouse=True)
def _fast_hashing_and_no_flusher(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Unit tests flush the audit buffer themselves; no background thread on the test database.
    settings.MLXM_AUDIT_FLUSH_INTERVAL = 0


@pytest.fixture
def boss(db: None) -> User:
    return get_user_model().objects.create_superuser(username="boss", password="pw-boss-123456")


@pytest.fixture
def member(db: None) -> User:
    return get_user_model().objects.create_user(username="member", password="pw-member-123456")


@pytest.fixture
def boss_client(boss: User) -> Client:
    c = Client()
    c.force_login(boss)
    return c


@pytest.fixture
def member_client(member: User) -> Client:
    c = Client()
    c.force_login(member)
    return c
