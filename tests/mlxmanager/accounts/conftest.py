"""Small factories for the accounts tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.test import Client

PASSWORD = "a-long-test-password-42"

_seq = itertools.count(1)

UserFactory = Callable[..., User]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:  # type: ignore[no-untyped-def]
    # The production hasher takes ~1s a password by design; these tests don't test it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def make_user(db: None) -> UserFactory:
    """`make_user(admin=False, username=None, password=PASSWORD, **fields)`."""

    def make(
        *, admin: bool = False, username: str | None = None, password: str = PASSWORD, **fields: Any
    ) -> User:
        username = username or f"user{next(_seq)}"
        manager = get_user_model().objects
        create = manager.create_superuser if admin else manager.create_user
        return create(username=username, password=password, **fields)

    return make


@pytest.fixture
def member(make_user: UserFactory) -> User:
    return make_user(username="member")


@pytest.fixture
def admin(make_user: UserFactory) -> User:
    return make_user(admin=True, username="boss")


@pytest.fixture
def member_client(client: Client, member: User) -> Client:
    client.force_login(member)
    return client
