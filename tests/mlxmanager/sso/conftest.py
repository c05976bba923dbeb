from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlxmanager.credentials import crypto
from tests.idp.server import Idp
from tests.mlxmanager.people import _fast_hashing_and_no_flusher, boss, boss_client, member, member_client  # noqa: F401

OIDC_ENV = (
    "MLXM_OIDC_ISSUER",
    "MLXM_OIDC_CLIENT_ID",
    "MLXM_OIDC_CLIENT_SECRET",
    "MLXM_OIDC_PROVIDER_NAME",
    "MLXM_OIDC_ALLOWED_DOMAINS",
    "MLXM_OIDC_GROUPS_CLAIM",
    "MLXM_OIDC_ADMIN_GROUP",
    "MLXM_PASSWORD_LOGIN",
)


@pytest.fixture(autouse=True)
def _no_oidc_env_and_a_private_key_file(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    for name in OIDC_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLXM_CREDENTIALS_KEY", raising=False)
    settings.MLXM_CREDENTIALS_KEY_FILE = tmp_path / "credentials.key"
    crypto.keyring.reload()
    yield
    crypto.keyring.reload()


@pytest.fixture(scope="session")
def idp_server() -> Iterator[Idp]:
    provider = Idp().start()
    yield provider
    provider.stop()


@pytest.fixture
def idp(idp_server: Idp) -> Iterator[Idp]:
    from tests.idp.server import IdpUser

    idp_server.reset()
    idp_server.user = IdpUser("sub-alice", "alice@example.com", "alice", groups=["mlx-admins"])
    yield idp_server
    idp_server.reset()


@pytest.fixture
def oidc_env(idp: Idp, monkeypatch: pytest.MonkeyPatch) -> Idp:
    monkeypatch.setenv("MLXM_OIDC_ISSUER", idp.url)
    monkeypatch.setenv("MLXM_OIDC_CLIENT_ID", idp.client_id)
    monkeypatch.setenv("MLXM_OIDC_CLIENT_SECRET", idp.client_secret)
    monkeypatch.setenv("MLXM_OIDC_PROVIDER_NAME", "Unit IdP")
    monkeypatch.setenv("MLXM_OIDC_ALLOWED_DOMAINS", "example.com")
    monkeypatch.setenv("MLXM_OIDC_ADMIN_GROUP", "mlx-admins")
    return idp
