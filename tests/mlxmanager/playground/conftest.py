"""Fixtures for the playground tests: users (from the accounts tests) and conversations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mlxmanager.playground.models import Conversation
from mlxmanager.playground.services import conversation_create
from tests.mlxmanager.accounts.conftest import (  # noqa: F401  (fixtures)
    _fast_password_hashing,
    admin,
    make_user,
    member,
    member_client,
)

TURN = [
    {"role": "user", "content": "What is MLX?"},
    {
        "role": "assistant",
        "content": "An array framework for Apple silicon.",
        "reasoning": "The user asks about MLX.",
        "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
        "finish_reason": "stop",
    },
]


@pytest.fixture
def make_conversation() -> Callable[..., Conversation]:
    def make(
        *, user: Any, profile_name: str = "tiny", messages: list | None = None, title: str = ""
    ) -> Conversation:
        return conversation_create(
            user=user, profile_name=profile_name, messages=TURN if messages is None else messages, title=title
        )

    return make
