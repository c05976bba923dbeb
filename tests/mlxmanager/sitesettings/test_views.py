from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from mlxmanager.accounts.models import ApiKey
from mlxmanager.accounts.services import api_key_create
from mlxmanager.audit.models import AdminAction
from mlxmanager.profiles.models import Profile
from mlxmanager.sitesettings import selectors

pytestmark = pytest.mark.django_db


def test_settings_page_is_for_admins(client: Client, member_client: Client) -> None:
    assert client.get("/settings/").status_code == 302
    assert member_client.get("/settings/").status_code == 403


def test_settings_page_saves_and_says_where_each_change_applies(boss_client: Client) -> None:
    html = boss_client.get("/settings/").content.decode()
    assert "MLXM_MAX_QUEUE" in html and "/settings/sso/" in html and "after a restart" in html
    r = boss_client.post("/settings/", {"max_queue": "4", "disk_cache_bytes": "1000000", "cors_origins": ""})
    html = r.content.decode()
    assert r.status_code == 200 and "Saved." in html
    assert "Queue length per model</strong>: applied live (sent to the worker)" in html
    assert "Disk prompt cache (bytes)</strong>: applied after a restart" in html
    assert selectors.value("max_queue") == 4
    assert AdminAction.objects.filter(action="mlxmanager.settings.changed").count() == 1


def test_a_bad_value_keeps_what_was_typed_and_saves_nothing(boss_client: Client) -> None:
    r = boss_client.post(
        "/settings/", {"max_queue": "4", "queue_timeout": "soon", "hf_endpoint": "https://mirror.example"}
    )
    html = r.content.decode()
    assert r.status_code == 400 and "Nothing was saved" in html
    assert "Queue timeout (seconds): must be a number of seconds, not &#x27;soon&#x27;" in html
    assert 'value="soon"' in html and 'value="https://mirror.example"' in html
    assert selectors.value("max_queue") is None
    assert not AdminAction.objects.filter(action="mlxmanager.settings.changed").exists()


def test_connect_page_fills_in_the_address_a_key_and_the_default_model(
    member: User, member_client: Client, settings: Any
) -> None:
    Profile.objects.create(name="house-model", model_path="/m", is_default=True)
    html = member_client.get("/connect/").content.decode()
    assert "http://testserver/v1" in html and "YOUR_API_KEY" in html and "house-model" in html
    assert "ANTHROPIC_BASE_URL=http://testserver" in html and "ANTHROPIC_AUTH_TOKEN" in html

    key, _ = api_key_create(user=member, name="laptop")
    settings.MLXM_PUBLIC_URL = "https://llm.example.com"
    html = member_client.get(f"/connect/?key={key.pk}").content.decode()
    assert "https://llm.example.com/v1" in html and f"{key.prefix}…" in html

    r = member_client.post("/connect/", {"name": "claude-code"})
    created = ApiKey.objects.get(user=member, name="claude-code")
    html = r.content.decode()
    assert r.status_code == 200 and "Copy your new key now" in html
    secret = html.split('<pre id="new-key">')[1].split("</pre>")[0]
    assert secret.startswith(created.prefix) and f"ANTHROPIC_AUTH_TOKEN={secret}" in html

    assert member_client.post("/connect/", {"name": ""}).status_code == 400
