from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from mlxmanager.credentials import crypto
from mlxmanager.credentials.services import credential_create
from mlxmanager.rules.models import Rule

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def setup(tmp_path: Path, settings: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("MLXM_CREDENTIALS_KEY", raising=False)
    settings.MLXM_CREDENTIALS_KEY_FILE = tmp_path / "credentials.key"
    crypto.keyring.reload()
    credential_create(name="oa", provider="openai", secret="sk-view-secret-1234")


def test_admin_only(client: Client, member_client: Client) -> None:
    assert client.get("/routing/").status_code == 302
    assert member_client.get("/routing/").status_code == 403
    assert member_client.get("/api/rules/").status_code == 403


def test_create_reorder_toggle_test_delete(boss_client: Client) -> None:
    for name in ("first", "second"):
        r = boss_client.post("/routing/", {"name": name, "match_type": "glob", "pattern": "gpt-*",
                                           "targets": "oa:gpt-4o-mini\nlocal:tiny-random", "timeout_s": "7"}, **HTMX)  # fmt: skip
        assert r.status_code == 200 and "Added rule" in r.content.decode()
    html = boss_client.get("/routing/").content.decode()
    assert html.index("first") < html.index("second") and "sk-view-secret" not in html
    second = Rule.objects.get(name="second")
    boss_client.post(f"/routing/{second.pk}/move/", {"direction": "up"}, **HTMX)
    assert list(Rule.objects.values_list("name", flat=True)) == ["second", "first"]
    first = Rule.objects.get(name="first")
    boss_client.post("/routing/order/", {"ids": [first.pk, second.pk]}, **HTMX)
    assert list(Rule.objects.values_list("name", flat=True)) == ["first", "second"]
    r = boss_client.get("/routing/test/", {"model": "gpt-5"}, **HTMX)
    assert "first" in r.content.decode() and "cloud:oa" in r.content.decode()
    boss_client.post(f"/routing/{first.pk}/toggle/", {"enabled": "0"}, **HTMX)
    assert "second" in boss_client.get("/routing/test/", {"model": "gpt-5"}, **HTMX).content.decode()
    bad = boss_client.post(
        "/routing/", {"name": "x", "match_type": "regex", "pattern": "(a+)+", "targets": "oa"}, **HTMX
    )
    assert bad.status_code == 400 and "nested repetition" in bad.content.decode()
    boss_client.post(f"/routing/{first.pk}/delete/", **HTMX)
    assert Rule.objects.count() == 1
    assert boss_client.get("/routing/test/?model=zzz").status_code == 200  # full page


def test_api(boss_client: Client) -> None:
    r = boss_client.post("/api/rules/", {"name": "r", "pattern": "m", "targets": [{"credential": "oa", "model": "x"}]},
                         content_type="application/json")  # fmt: skip
    assert r.status_code == 201 and r.json()["targets"] == [{"profile": "", "credential": "oa", "model": "x"}]
    rid = r.json()["id"]
    r = boss_client.patch(f"/api/rules/{rid}", {"timeout_s": 3.5}, content_type="application/json")
    assert r.json()["timeout_s"] == 3.5
    assert boss_client.get("/api/rules/match?model=m").json()["rule"] == "r"
    r = boss_client.post("/api/rules/", {"name": "q", "pattern": "(a+)+", "match_type": "regex", "targets": [{"profile": "p"}]},
                         content_type="application/json")  # fmt: skip
    assert r.status_code == 400 and r.json()["param"] == "pattern"
    assert boss_client.delete(f"/api/rules/{rid}").status_code == 204


def test_edit_in_place_shows_the_row_as_a_form_saves_and_keeps_it_on_errors(boss_client: Client) -> None:
    boss_client.post("/routing/", {"name": "cloud", "match_type": "glob", "pattern": "gpt-*",
                                   "targets": "oa:gpt-4o-mini\nlocal:tiny-random", "timeout_s": "7"}, **HTMX)  # fmt: skip
    rule = Rule.objects.get(name="cloud")
    form = boss_client.get(f"/routing/{rule.pk}/edit/", **HTMX).content.decode()
    assert (
        'class="rule-edit"' in form
        and 'value="gpt-*"' in form
        and "oa:gpt-4o-mini\nlocal:tiny-random" in form
    )
    assert 'value="7"' in form

    saved = boss_client.post(f"/routing/{rule.pk}/edit/", {"name": "cloud2", "match_type": "exact", "pattern": "gpt-5",
                                                           "targets": "local:tiny-random", "timeout_s": ""}, **HTMX)  # fmt: skip
    assert saved.status_code == 200 and "Saved rule &#x27;cloud2&#x27;." in saved.content.decode()
    rule.refresh_from_db()
    assert (rule.name, rule.match_type, rule.pattern, rule.timeout_s) == ("cloud2", "exact", "gpt-5", None)
    assert [t.label for t in rule.targets.all()] == ["local:tiny-random"]
    assert 'class="rule-edit"' not in saved.content.decode()

    bad = boss_client.post(f"/routing/{rule.pk}/edit/", {"name": "cloud2", "match_type": "regex", "pattern": "(a+)+",
                                                         "targets": "oa", "timeout_s": ""}, **HTMX)  # fmt: skip
    page = bad.content.decode()
    assert bad.status_code == 400 and "nested repetition" in page
    assert 'class="rule-edit"' in page and 'value="(a+)+"' in page  # the form stays, with what was typed
    rule.refresh_from_db()
    assert rule.pattern == "gpt-5"
    assert boss_client.get("/routing/999999/edit/", **HTMX).status_code == 404
    assert boss_client.get(f"/routing/{rule.pk}/edit/").status_code == 200  # the full page, without htmx


def test_edit_a_rule_on_the_routing_page(boss_client: Client, member_client: Client) -> None:
    from mlxmanager.audit.models import AdminAction
    from mlxmanager.rules.services import cloud_names_rule_ensure

    rule = cloud_names_rule_ensure()
    assert rule is not None
    assert member_client.get(f"/routing/{rule.pk}/edit/").status_code == 403
    assert boss_client.get("/routing/999999/edit/").status_code == 404
    html = boss_client.get("/routing/").content.decode()
    assert f"/routing/{rule.pk}/edit/" in html and "local:@default" in html
    form = boss_client.get(f"/routing/{rule.pk}/edit/").content.decode()
    assert 'value="claude-*"' in form and "local:@default</textarea>" in form and 'value="300"' in form

    # A bad pattern is refused; what was typed stays.
    bad = boss_client.post(f"/routing/{rule.pk}/edit/", {"name": rule.name, "match_type": "regex",
                                                         "pattern": "(a+)+", "targets": "local:@default"})  # fmt: skip
    assert bad.status_code == 400 and "nested repetition" in bad.content.decode()
    assert 'value="(a+)+"' in bad.content.decode()

    # More cloud names, a cloud credential first and the default model as its fallback.
    r = boss_client.post(f"/routing/{rule.pk}/edit/", {"name": rule.name, "match_type": "regex",
                         "pattern": "claude-.*|gpt-4o.*", "targets": "oa:gpt-4o-mini\nlocal:@default",
                         "timeout_s": "120"})  # fmt: skip
    assert r.status_code == 302
    rule.refresh_from_db()
    assert rule.pattern == "claude-.*|gpt-4o.*" and rule.timeout_s == 120
    assert [t.label for t in rule.targets.all()] == ["oa:gpt-4o-mini", "local:@default"]
    assert AdminAction.objects.filter(action="mlxmanager.rule.changed", object_id=str(rule.pk)).exists()
