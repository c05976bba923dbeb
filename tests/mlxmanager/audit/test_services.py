from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from mlxmanager.accounts.services import api_key_create, api_key_revoke
from mlxmanager.audit import signals
from mlxmanager.audit.models import AdminAction, RequestLog
from mlxmanager.audit.services import audit_prune, changes, log_action
from mlxmanager.profiles.models import Profile
from tests.mlxmanager.audit.factories import T0, rows

pytestmark = pytest.mark.django_db


def test_log_action_never_keeps_secret_values(boss: Any) -> None:
    entry = log_action(boss, "mlxmanager.user.changed", user=boss,
                       data={"password": "hunter2", "nested": {"secret": "s"}, "name": "x"})  # fmt: skip
    assert entry.data == {"password": "(changed)", "nested": {"secret": "(changed)"}, "name": "x"}
    assert entry.actor_name == "boss" and entry.object_type == "user"
    with pytest.raises(ValueError):
        log_action(None, "made.up")
    assert changes({"a": 1, "digest": "x"}, {"a": 2, "digest": "y"}) == {"a": [1, 2], "digest": "(changed)"}


def test_model_changes_are_audited_with_the_actor(boss: Any) -> None:
    AdminAction.objects.all().delete()  # the fixture's own user.created
    token = signals.set_actor(boss)
    try:
        user = get_user_model().objects.create_user(username="newbie", password="pw-123456789")
        user.set_password("another-pw-123")
        user.save()
        key, secret = api_key_create(user=user, name="laptop")
        api_key_revoke(user=boss, key_id=key.pk)
        Profile.objects.create(name="p1", model_path="/tmp/x")  # noqa: S108
        Profile.objects.filter(name="p1").first().delete()  # type: ignore[union-attr]
    finally:
        signals.reset_actor(token)
    actions = list(AdminAction.objects.order_by("id").values_list("action", "actor_name"))
    codes = [a for a, _ in actions]
    assert codes == ["mlxmanager.user.created", "mlxmanager.user.changed", "mlxmanager.apikey.created",
                     "mlxmanager.apikey.revoked", "mlxmanager.profile.created", "mlxmanager.profile.deleted"]  # fmt: skip
    assert {n for _, n in actions} == {"boss"}
    dumped = str(list(AdminAction.objects.values_list("data", flat=True)))
    assert (
        secret not in dumped and key.digest not in dumped and "pbkdf2" not in dumped and "md5$" not in dumped
    )
    user.last_login = T0
    user.save(update_fields=["last_login"])  # bookkeeping: not an admin change
    assert AdminAction.objects.count() == 6


def test_prune_deletes_old_rows_only(boss: Any) -> None:
    rows(5, start=T0 - timedelta(days=40))
    rows(3, start=T0 - timedelta(days=1))
    assert audit_prune(days=30, now=T0, user=boss, chunk=2) == 5
    assert RequestLog.objects.count() == 3
    assert AdminAction.objects.get(action="mlxmanager.audit.pruned").data == {"days": 30, "deleted": 5}
    with pytest.raises(ValueError):
        audit_prune(days=0)


def test_prune_command(settings: Any, capsys: Any) -> None:
    rows(2, start=T0 - timedelta(days=4000))
    settings.MLXM_AUDIT_RETENTION_DAYS = 3650
    call_command("audit_prune")
    assert "deleted 2" in capsys.readouterr().out
    call_command("audit_prune", "--days", "1")
    assert RequestLog.objects.count() == 0


def _rollup_state() -> list[tuple[Any, ...]]:
    from mlxmanager.audit.models import RequestHourly

    return sorted(
        RequestHourly.objects.values_list(
            "bucket", "username", "requested_model", "backend", "status", "ok", "requests", "prompt_tokens",
            "completion_tokens",
        )
    )  # fmt: skip


def test_rollups_count_every_row_and_a_rebuild_gives_the_same() -> None:
    from mlxmanager.audit.services import rollup_rebuild

    rows(10, step=timedelta(minutes=13), username="ann")
    rows(4, step=timedelta(minutes=31), username="bob", status=503, error_type="upstream_error")
    rows(3, step=timedelta(minutes=1), username="ann", status=200, error_type="client_closed")
    incremental = _rollup_state()
    assert sum(r[6] for r in incremental) == 17
    assert sum(r[7] for r in incremental) == 170
    assert {(r[1], r[4], r[5]) for r in incremental} == {
        ("ann", 200, True),
        ("bob", 503, False),
        ("ann", 200, False),
    }
    assert rollup_rebuild() == len(incremental)
    assert _rollup_state() == incremental
    assert rollup_rebuild(since=T0 + timedelta(hours=1)) >= 1  # a partial rebuild keeps earlier hours
    assert _rollup_state() == incremental


def test_prune_drops_the_rollups_of_pruned_hours() -> None:
    from mlxmanager.audit.models import RequestHourly

    rows(3, start=T0 - timedelta(days=40))
    rows(2, start=T0)
    audit_prune(days=30, now=T0)
    assert RequestLog.objects.count() == 2
    assert sum(RequestHourly.objects.values_list("requests", flat=True)) == 2
