from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from mlxmanager.credentials import crypto
from mlxmanager.credentials.models import Credential

pytestmark = pytest.mark.django_db
SECRET = "sk-view-NEVER-SHOWN-4242424242"
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def key_file(tmp_path: Path, settings: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("MLXM_CREDENTIALS_KEY", raising=False)
    settings.MLXM_CREDENTIALS_KEY_FILE = tmp_path / "credentials.key"
    crypto.keyring.reload()


def test_page_is_admin_only(client: Client, member_client: Client) -> None:
    assert client.get("/credentials/").status_code == 302
    assert member_client.get("/credentials/").status_code == 403
    assert member_client.get("/api/credentials/").status_code == 403


def test_create_from_the_page_never_shows_the_secret(boss_client: Client) -> None:
    r = boss_client.post(
        "/credentials/", {"name": "team", "provider": "openai", "base_url": "", "secret": SECRET}, **HTMX
    )
    html = r.content.decode()
    assert r.status_code == 200 and "Saved" in html and "team" in html and SECRET not in html
    assert SECRET not in boss_client.get("/credentials/").content.decode()
    bad = boss_client.post("/credentials/", {"name": "x y", "provider": "openai", "secret": SECRET}, **HTMX)
    assert bad.status_code == 400 and SECRET not in bad.content.decode()
    cred = Credential.objects.get()
    r = boss_client.post(f"/credentials/{cred.pk}/secret/", {"secret": "sk-other-secret"}, **HTMX)
    assert "Replaced" in r.content.decode() and "sk-other-secret" not in r.content.decode()
    r = boss_client.post(f"/credentials/{cred.pk}/toggle/", {"enabled": "0"}, **HTMX)
    assert "disabled" in r.content.decode()
    r = boss_client.post(f"/credentials/{cred.pk}/delete/", **HTMX)
    assert not Credential.objects.exists()


def test_api_is_write_only(boss_client: Client) -> None:
    r = boss_client.post("/api/credentials/", {"name": "api", "provider": "anthropic", "secret": SECRET},
                         content_type="application/json")  # fmt: skip
    assert r.status_code == 201 and SECRET not in r.content.decode() and r.json()["has_secret"] is True
    cid = r.json()["id"]
    listed = boss_client.get("/api/credentials/").content.decode()
    assert SECRET not in listed and "secret_jwe" not in listed
    r = boss_client.patch(f"/api/credentials/{cid}", {"secret": "sk-new"}, content_type="application/json")
    assert r.status_code == 200 and "sk-new" not in r.content.decode()
    assert boss_client.delete(f"/api/credentials/{cid}").status_code == 204
    r = boss_client.post(
        "/api/credentials/", {"name": "x", "provider": "nope", "secret": "s"}, content_type="application/json"
    )
    assert r.status_code == 400 and r.json()["param"] == "provider"


def test_api_refuses_a_new_host_without_the_secret(boss_client: Client) -> None:
    r = boss_client.post("/api/credentials/", {"name": "api", "provider": "openai", "secret": SECRET},
                         content_type="application/json")  # fmt: skip
    cid = r.json()["id"]
    r = boss_client.patch(
        f"/api/credentials/{cid}",
        {"base_url": "https://attacker.example/v1"},
        content_type="application/json",
    )
    assert r.status_code == 400 and r.json()["param"] == "secret"
    assert Credential.objects.get(pk=cid).base_url == ""
    r = boss_client.patch(
        f"/api/credentials/{cid}",
        {"base_url": "https://attacker.example/v1", "secret": "sk-theirs"},
        content_type="application/json",
    )
    assert r.status_code == 200 and r.json()["base_url"] == "https://attacker.example/v1"
