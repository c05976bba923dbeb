from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.management import call_command

from mlxmanager.audit.models import AdminAction
from mlxmanager.credentials import crypto, services
from mlxmanager.credentials.models import Credential
from mlxmanager.credentials.selectors import upstream_config
from mlxmanager.errors import Conflict, DomainError
from mlxmanager.rules.services import TargetSpec, rule_create

pytestmark = pytest.mark.django_db
SECRET = "sk-unit-TOPSECRET-987654321"


@pytest.fixture(autouse=True)
def key_file(tmp_path: Path, settings: Any, monkeypatch: Any) -> Path:
    monkeypatch.delenv("MLXM_CREDENTIALS_KEY", raising=False)
    settings.MLXM_CREDENTIALS_KEY_FILE = tmp_path / "credentials.key"
    crypto.keyring.reload()
    yield settings.MLXM_CREDENTIALS_KEY_FILE
    crypto.keyring.reload()


def test_create_encrypts_and_audits_without_the_secret(boss: Any) -> None:
    cred = services.credential_create(name="OpenAI-Team", provider="openai", secret=SECRET, user=boss)
    assert (
        cred.name == "openai-team"
        and cred.api_base == "https://api.openai.com/v1"
        and cred.protocol == "openai"
    )
    assert SECRET not in cred.secret_jwe and crypto.decrypt(cred.secret_jwe) == SECRET
    config = upstream_config(cred)
    assert config.secret == SECRET and SECRET not in repr(config) and SECRET not in str(config)
    entry = AdminAction.objects.get(action="mlxmanager.credential.created")
    assert entry.actor_name == "boss" and SECRET not in json.dumps(entry.data)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"name": "bad name!"}, "name"),
        ({"name": "local"}, "name"),
        ({"provider": "azure"}, "provider"),
        ({"provider": "openai_compatible", "base_url": ""}, "base_url"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"base_url": "https://user:pw@host/v1"}, "base_url"),
        ({"secret": "two\nlines"}, "secret"),
    ],
)
def test_validation(fields: dict[str, str], param: str) -> None:
    args = {"name": "ok", "provider": "anthropic", "secret": "k", **fields}
    with pytest.raises(DomainError) as err:
        services.credential_create(**args)
    assert err.value.param == param


def test_update_replace_secret_delete(boss: Any) -> None:
    cred = services.credential_create(
        name="c1", provider="anthropic_compatible", base_url="http://h:1/", secret="a"
    )
    assert cred.base_url == "http://h:1" and cred.api_base == "http://h:1"
    with pytest.raises(Conflict):
        services.credential_create(name="c1", provider="anthropic", secret="b")
    services.credential_update(credential_id=cred.pk, secret=SECRET, enabled=False, user=boss)
    cred.refresh_from_db()
    assert crypto.decrypt(cred.secret_jwe) == SECRET and not cred.enabled
    codes = list(AdminAction.objects.values_list("action", flat=True))
    assert "mlxmanager.credential.secret_replaced" in codes and "mlxmanager.credential.changed" in codes
    assert SECRET not in json.dumps(list(AdminAction.objects.values_list("data", flat=True)))
    rule_create(name="r", match_type="exact", pattern="m", targets=[TargetSpec(credential="c1")])
    with pytest.raises(Conflict, match="used by routing rules"):
        services.credential_delete(credential_id=cred.pk)


def _transport(status: int, body: dict[str, Any], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


def test_test_connection(boss: Any) -> None:
    cred = services.credential_create(name="a", provider="anthropic", secret=SECRET)
    seen: list[httpx.Request] = []
    cred = services.credential_test(credential_id=cred.pk, user=boss,
                                    transport=_transport(200, {"data": [{"id": "x"}, {"id": "y"}]}, seen))  # fmt: skip
    assert cred.last_test_ok and cred.last_test_message == "OK: 2 models"
    assert (
        str(seen[0].url) == "https://api.anthropic.com/v1/models" and seen[0].headers["x-api-key"] == SECRET
    )
    # an upstream that echoes the key in its error: the stored message never has it
    echo = {"error": {"message": f"Incorrect API key provided: {SECRET}"}}
    cred = services.credential_test(credential_id=cred.pk, transport=_transport(401, echo, seen))
    assert (
        not cred.last_test_ok
        and cred.last_test_message.startswith("HTTP 401")
        and SECRET not in cred.last_test_message
    )

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    cred = services.credential_test(credential_id=cred.pk, transport=httpx.MockTransport(down))
    assert cred.last_test_message == (
        f"could not connect to {cred.api_base}; check the base URL and that the server is running"
    )


def test_rotate_key_command_reencrypts_everything(key_file: Path, capsys: Any) -> None:
    for i in range(3):
        services.credential_create(name=f"c{i}", provider="openai", secret=f"{SECRET}-{i}")
    old = crypto.keyring.current.kid
    call_command("credentials_rotate_key")
    new = crypto.keyring.current.kid
    assert new != old and set(Credential.objects.values_list("key_id", flat=True)) == {new}
    assert [crypto.decrypt(c.secret_jwe) for c in Credential.objects.order_by("name")] == [
        f"{SECRET}-{i}" for i in range(3)
    ]
    assert len(key_file.read_text().split()) == 2
    call_command("credentials_rotate_key", "--prune")
    assert len(key_file.read_text().split()) == 1
    assert crypto.decrypt(Credential.objects.first().secret_jwe).startswith(SECRET)  # type: ignore[union-attr]
    assert "re-encrypted 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "new_url",
    [
        "https://attacker.example/v1",  # host
        "http://api.openai.com/v1",  # scheme
        "https://api.openai.com:8443/v1",  # port
        "https://API.openai.com.evil.example/v1",  # look-alike host
    ],
)
def test_moving_the_base_url_to_another_origin_needs_the_secret_again(boss: Any, new_url: str) -> None:
    """Otherwise an admin could point a stored key at a server of theirs and press Test: the
    secret would be sent there in `Authorization: Bearer …` (write-only secrets read back)."""
    cred = services.credential_create(name="team", provider="openai", secret=SECRET)
    with pytest.raises(DomainError, match="secret") as err:
        services.credential_update(credential_id=cred.pk, base_url=new_url, user=boss)
    assert err.value.param == "secret"
    cred.refresh_from_db()
    assert cred.base_url == "" and crypto.decrypt(cred.secret_jwe) == SECRET
    # With the secret given again, the move is fine: that secret is the one sent there.
    services.credential_update(credential_id=cred.pk, base_url=new_url, secret="sk-for-the-new-host")
    cred.refresh_from_db()
    assert cred.base_url == new_url.rstrip("/") and crypto.decrypt(cred.secret_jwe) == "sk-for-the-new-host"


def test_a_path_only_change_keeps_the_secret(boss: Any) -> None:
    cred = services.credential_create(
        name="proxy", provider="openai_compatible", base_url="https://llm.example:8443/v1", secret=SECRET
    )
    services.credential_update(credential_id=cred.pk, base_url="https://LLM.example:8443/openai/v1/")
    cred.refresh_from_db()
    assert cred.base_url == "https://LLM.example:8443/openai/v1" and crypto.decrypt(cred.secret_jwe) == SECRET
    # The provider's default, written out, is the same origin as a blank base URL.
    other = services.credential_create(name="plain", provider="openai", secret=SECRET)
    services.credential_update(credential_id=other.pk, base_url="https://api.openai.com:443/v1")
    other.refresh_from_db()
    assert other.base_url == "https://api.openai.com:443/v1"
