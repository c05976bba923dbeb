from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlxmanager.audit.models import AdminAction
from mlxmanager.credentials import crypto
from mlxmanager.credentials.services import credential_create, credential_update
from mlxmanager.errors import Conflict, DomainError
from mlxmanager.profiles.models import Profile
from mlxmanager.rules import selectors
from mlxmanager.rules.models import Rule
from mlxmanager.rules.services import (
    TargetSpec,
    parse_targets,
    rule_create,
    rule_delete,
    rule_move,
    rule_reorder,
    rule_update,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def setup(tmp_path: Path, settings: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("MLXM_CREDENTIALS_KEY", raising=False)
    settings.MLXM_CREDENTIALS_KEY_FILE = tmp_path / "credentials.key"
    crypto.keyring.reload()
    selectors.invalidate_routes()
    credential_create(name="oa", provider="openai", secret="sk-1")
    Profile.objects.create(name="tiny", model_path="/m")


def test_parse_targets() -> None:
    assert parse_targets("local:tiny\n oa:gpt-4o \n\noa\nollama:llama3:8b") == [
        TargetSpec(profile="tiny"), TargetSpec(credential="oa", model="gpt-4o"), TargetSpec(credential="oa"),
        TargetSpec(credential="ollama", model="llama3:8b")]  # fmt: skip


def test_create_orders_audits_and_validates(boss: Any) -> None:
    a = rule_create(name="a", match_type="glob", pattern="gpt-*", targets=parse_targets("oa:gpt-4o\nlocal:tiny"),
                    timeout_s=5, user=boss)  # fmt: skip
    b = rule_create(name="b", match_type="exact", pattern="x", targets=[TargetSpec(profile="tiny")])
    assert (a.position, b.position) == (0, 1)
    assert [t.label for t in a.targets.all()] == ["oa:gpt-4o", "local:tiny"]
    entry = AdminAction.objects.get(action="mlxmanager.rule.created", object_id=str(a.pk))
    assert entry.data["targets"] == ["oa:gpt-4o", "local:tiny"] and entry.actor_name == "boss"
    with pytest.raises(Conflict):
        rule_create(name="a", match_type="exact", pattern="y", targets=[TargetSpec(profile="tiny")])
    for bad in ([], [TargetSpec(credential="nope")], [TargetSpec()], [TargetSpec(profile="t")] * 9):
        with pytest.raises(DomainError):
            rule_create(name="c", match_type="exact", pattern="y", targets=bad)
    with pytest.raises(DomainError):
        rule_create(
            name="c", match_type="exact", pattern="y", targets=[TargetSpec(profile="t")], timeout_s=-1
        )
    with pytest.raises(DomainError):
        rule_create(name="c", match_type="regex", pattern="(a+)+", targets=[TargetSpec(profile="t")])


def test_reorder_move_update_delete(boss: Any) -> None:
    r = [
        rule_create(name=n, match_type="exact", pattern=n, targets=[TargetSpec(profile="tiny")])
        for n in "abc"
    ]
    rule_move(rule_id=r[2].pk, offset=-1, user=boss)
    assert list(Rule.objects.values_list("name", flat=True)) == ["a", "c", "b"]
    rule_reorder(ids=[r[1].pk, r[0].pk, r[2].pk])
    assert list(Rule.objects.values_list("name", flat=True)) == ["b", "a", "c"]
    with pytest.raises(DomainError):
        rule_reorder(ids=[r[0].pk])
    rule_update(
        rule_id=r[0].pk,
        pattern="a*",
        match_type="glob",
        targets=parse_targets("oa"),
        enabled=False,
        user=boss,
    )
    changed = AdminAction.objects.filter(action="mlxmanager.rule.changed").latest("id").data
    assert set(changed) == {"pattern", "match_type", "targets", "enabled"}
    rule_delete(rule_id=r[0].pk)
    assert (
        Rule.objects.count() == 2
        and AdminAction.objects.filter(action="mlxmanager.rule.reordered").count() == 2
    )


def test_route_table_and_explain() -> None:
    rule_create(
        name="g",
        match_type="glob",
        pattern="gpt-*",
        targets=parse_targets("oa:up-model\nlocal:tiny\nlocal:gone"),
    )
    rule_create(name="e", match_type="exact", pattern="gpt-4o", targets=parse_targets("local:tiny"))
    table = selectors.load_routes()
    route = table.match("gpt-4o")
    assert route is not None and route.rule_name == "g"
    assert [t.label for t in route.targets] == ["cloud:oa", "local:tiny", "local:gone"]
    assert route.targets[0].upstream is not None and route.targets[0].upstream.secret == "sk-1"
    assert route.targets[0].upstream_model("gpt-4o") == "up-model"
    assert table.match("claude") is None
    info = selectors.explain("gpt-4o")
    assert info["rule"] == "g" and [t["ok"] for t in info["targets"]] == [True, True, False]
    assert "upstream model 'up-model'" in info["targets"][0]["note"]
    assert selectors.explain("tiny")["targets"][0]["label"] == "local:tiny"
    assert "404" in selectors.explain("unknown")["note"]
    credential_update(credential_id=route.targets[0].upstream.id, enabled=False)
    assert "credential disabled" in selectors.explain("gpt-4o")["targets"][0]["note"]


def test_the_route_cache_is_dropped_on_writes(django_capture_on_commit_callbacks: Any, settings: Any) -> None:
    settings.MLXM_ROUTES_CACHE_SECONDS = 3600
    assert selectors.routes().match("m") is None
    with django_capture_on_commit_callbacks(execute=True):
        rule_create(name="m", match_type="exact", pattern="m", targets=[TargetSpec(profile="tiny")])
    assert selectors.routes().match("m") is not None


def test_the_built_in_cloud_names_rule_is_made_once_and_follows_the_default_model(boss: Any) -> None:
    from mlxmanager.profiles.models import Profile
    from mlxmanager.rules.selectors import explain
    from mlxmanager.rules.services import CLOUD_NAMES_RULE, cloud_names_rule_ensure, rule_delete
    from mlxmanager.sitesettings import selectors as site
    from mlxmanager.sitesettings.services import settings_update

    site.invalidate()
    rule = cloud_names_rule_ensure()
    assert rule is not None and rule.name == CLOUD_NAMES_RULE and rule.pattern == "claude-*"
    assert [t.label for t in rule.targets.all()] == ["local:@default"]
    assert cloud_names_rule_ensure() is None  # once
    assert explain("claude-sonnet-4-5")["targets"][0]["ok"] is False  # no default model yet
    Profile.objects.create(name="house", model_path="/m", is_default=True)
    Profile.objects.create(name="other", model_path="/m2")
    result = explain("claude-sonnet-4-5")
    assert result["rule"] == CLOUD_NAMES_RULE and "now 'house'" in result["targets"][0]["note"]
    settings_update(values={"default_model": "other"}, user=boss)
    assert "now 'other'" in explain("claude-haiku-4-5")["targets"][0]["note"]
    assert explain("gpt-4o")["rule"] is None
    rule_delete(rule_id=rule.pk, user=boss)
    assert cloud_names_rule_ensure() is None  # a deleted rule stays deleted
    site.invalidate()


def test_rules_written_after_the_built_in_one_apply_before_it(boss: Any) -> None:
    from mlxmanager.rules.selectors import load_routes
    from mlxmanager.rules.services import CLOUD_NAMES_RULE, cloud_names_rule_ensure, rule_reorder

    first = rule_create(name="first", match_type="exact", pattern="x", targets=[TargetSpec(profile="tiny")])
    builtin = cloud_names_rule_ensure()
    assert builtin is not None
    mine = rule_create(
        name="my-claude", match_type="exact", pattern="claude-x", targets=[TargetSpec(profile="tiny")]
    )
    names = list(Rule.objects.values_list("name", flat=True))
    assert names == ["first", "my-claude", CLOUD_NAMES_RULE]
    assert load_routes().match("claude-x").rule_name == "my-claude"  # type: ignore[union-attr]
    assert load_routes().match("claude-y").rule_name == CLOUD_NAMES_RULE  # type: ignore[union-attr]
    # Moved up by the admin, it is an ordinary rule: new ones go last again.
    rule_reorder(ids=[builtin.pk, first.pk, mine.pk], user=boss)
    rule_create(name="later", match_type="exact", pattern="y", targets=[TargetSpec(profile="tiny")])
    assert list(Rule.objects.values_list("name", flat=True))[-1] == "later"
