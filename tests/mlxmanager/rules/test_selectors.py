"""The gateway's route table: loaded on first use, dropped on writes, refreshed in the
background once older than its TTL (no request waits for the database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from mlxmanager.credentials import crypto
from mlxmanager.profiles.models import Profile
from mlxmanager.rules import selectors
from mlxmanager.rules.models import Rule
from mlxmanager.rules.services import TargetSpec, rule_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
def setup(tmp_path: Path, settings: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("MLXM_CREDENTIALS_KEY", raising=False)
    settings.MLXM_CREDENTIALS_KEY_FILE = tmp_path / "credentials.key"
    crypto.keyring.reload()
    selectors.invalidate_routes()


def _add_rule(name: str) -> None:
    Profile.objects.get_or_create(name="tiny", model_path="/m")
    rule_create(name=name, match_type="exact", pattern=name, targets=[TargetSpec(profile="tiny")])


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the table was read from the database (the real load still runs)."""
    count: list[int] = []
    real = selectors.load_routes

    def counting() -> selectors.RouteTable:
        count.append(1)
        return real()

    monkeypatch.setattr(selectors, "load_routes", counting)
    return count


async def test_the_first_request_loads_the_table_and_later_ones_reuse_it(
    loads: list[int], settings: Any
) -> None:
    settings.MLXM_ROUTES_CACHE_SECONDS = 3600
    await sync_to_async(_add_rule)("a")
    assert await selectors.route_for("a") is not None
    assert await selectors.route_for("b") is None
    assert len(loads) == 1


async def test_a_stale_table_serves_while_it_reloads_in_the_background(
    loads: list[int], settings: Any
) -> None:
    settings.MLXM_ROUTES_CACHE_SECONDS = 3600
    await sync_to_async(_add_rule)("a")
    first = await selectors.aroutes()
    # Another web process adds a rule (no invalidation reaches this one) and the TTL passes.
    await sync_to_async(Rule.objects.create)(name="b", match_type="exact", pattern="b", position=5)
    first.built_at -= 7200

    served = await selectors.aroutes()
    assert served is first  # answered at once from the old table
    assert selectors._refresh is not None
    await selectors._refresh
    assert len(loads) == 2
    assert (await selectors.aroutes()) is not first
    assert [r.rule_name for _, r in (await selectors.aroutes()).entries] == ["a", "b"]


async def test_a_reload_started_before_a_change_is_not_kept(settings: Any, monkeypatch: Any) -> None:
    settings.MLXM_ROUTES_CACHE_SECONDS = 3600
    await sync_to_async(_add_rule)("a")
    old = await selectors.aroutes()
    real = selectors.load_routes

    def load_then_change() -> selectors.RouteTable:
        table = real()  # read before the change below commits
        selectors.invalidate_routes()  # what a rule write in this process does
        return table

    monkeypatch.setattr(selectors, "load_routes", load_then_change)
    old.built_at -= 7200
    await selectors.aroutes()
    assert selectors._refresh is not None
    await selectors._refresh
    assert selectors._table is None  # the next request loads afresh


async def test_a_failed_background_reload_keeps_the_old_table(settings: Any, monkeypatch: Any) -> None:
    settings.MLXM_ROUTES_CACHE_SECONDS = 3600
    await sync_to_async(_add_rule)("a")
    old = await selectors.aroutes()

    def broken() -> selectors.RouteTable:
        raise RuntimeError("database is away")

    monkeypatch.setattr(selectors, "load_routes", broken)
    old.built_at -= 7200
    assert await selectors.aroutes() is old
    assert selectors._refresh is not None
    await selectors._refresh
    assert await selectors.route_for("a") is not None  # still served
    assert selectors._refresh.done() and (await selectors.aroutes()) is old
    assert selectors._fresh(old)  # next try after another TTL, not on every request
