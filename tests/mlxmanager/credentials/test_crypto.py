from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from mlxmanager.credentials import crypto


@pytest.fixture(autouse=True)
def key_file(tmp_path: Path, settings: Any, monkeypatch: Any) -> Path:
    monkeypatch.delenv("MLXM_CREDENTIALS_KEY", raising=False)
    settings.MLXM_CREDENTIALS_KEY_FILE = tmp_path / "credentials.key"
    crypto.keyring.reload()
    yield settings.MLXM_CREDENTIALS_KEY_FILE
    crypto.keyring.reload()


def test_round_trip_and_the_key_file_is_private(key_file: Path) -> None:
    token, kid = crypto.encrypt("sk-live-123")
    assert "sk-live-123" not in token and token.count(".") == 4  # compact JWE
    assert crypto.kid_of(token) == kid
    assert crypto.decrypt(token) == "sk-live-123"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_rotation_keeps_old_tokens_readable(key_file: Path) -> None:
    old_token, old_kid = crypto.encrypt("secret-a")
    crypto.prepend_key_file(crypto.new_secret())
    new_token, new_kid = crypto.encrypt("secret-b")
    assert new_kid != old_kid and crypto.keyring.current.kid == new_kid
    assert crypto.decrypt(old_token) == "secret-a" and crypto.decrypt(new_token) == "secret-b"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_process_with_an_old_keyring_reloads_for_a_new_kid(key_file: Path) -> None:
    crypto.encrypt("x")
    stale = list(crypto.keyring.keys())
    crypto.prepend_key_file(crypto.new_secret())
    token, _ = crypto.encrypt("fresh")
    crypto.keyring._keys = stale  # another process, still holding the old keyring
    assert crypto.decrypt(token) == "fresh"


def test_unknown_keys_and_tampering_fail_clearly(key_file: Path) -> None:
    token, _ = crypto.encrypt("x")
    head, rest = token.split(".", 1)
    with pytest.raises(crypto.SecretError):
        crypto.decrypt(token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"))
    key_file.write_text(crypto.new_secret())
    crypto.keyring.reload()
    with pytest.raises(crypto.SecretError, match="not in the keyring"):
        crypto.decrypt(token)
    with pytest.raises(crypto.SecretError):
        crypto.decrypt("not-a-token")


def test_keys_from_the_environment(monkeypatch: Any, key_file: Path) -> None:
    monkeypatch.setenv("MLXM_CREDENTIALS_KEY", "first-key-material, second-key-material")
    crypto.keyring.reload()
    token, kid = crypto.encrypt("v")
    assert kid == crypto._derive("first-key-material").kid and not key_file.exists()
    monkeypatch.setenv("MLXM_CREDENTIALS_KEY", "third,first-key-material")
    crypto.keyring.reload()
    assert crypto.decrypt(token) == "v"
    assert "first-key-material" not in repr(crypto.keyring.keys())
