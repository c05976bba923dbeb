"""Usage tests: unit fixtures (people), budget counters reset around each test."""

from collections.abc import Iterator

import pytest

from tests.mlxmanager.people import _fast_hashing_and_no_flusher, boss, boss_client, member, member_client  # noqa: F401


@pytest.fixture(autouse=True)
def _fresh_budget_counters(db: None) -> Iterator[None]:
    from mlxmanager.accounts import limits
    from mlxmanager.usage import budgets

    budgets.reset()
    limits.reset()
    yield
    budgets.reset()
    limits.reset()
