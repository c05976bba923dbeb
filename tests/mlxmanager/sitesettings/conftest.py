from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlxmanager.credentials import crypto
from mlxmanager.sitesettings import selectors
from tests.mlxmanager.people import _fast_hashing_and_no_flusher, boss, boss_client, member, member_client  # noqa: F401


@pytest.fixture(autouse=True)
def _fresh_settings(tmp_path: Path, settings: Any, monkeypatch: Any) -> Iterator[None]:
    """No cached rows leak between tests; a private credentials key (the HF token)."""
    monkeypatch.delenv("MLXM_CREDENTIALS_KEY", raising=False)
    settings.MLXM_CREDENTIALS_KEY_FILE = tmp_path / "credentials.key"
    crypto.keyring.reload()
    selectors.invalidate()
    yield
    selectors.invalidate()
