"""Secrets at rest: compact JWE (`dir` + A256GCM, joserfc) under a keyring.

The keyring comes from `MLXM_CREDENTIALS_KEY` (comma-separated secrets, the first one
encrypts) or else from the key file (`MLXM_CREDENTIALS_KEY_FILE`, default
`<data dir>/credentials.key`, one secret per line, created 0600 on first use). Every token
names its key (`kid`), so old keys keep decrypting while rows are re-encrypted: rotation
needs no downtime. A token sealed by a key this process doesn't know yet makes it re-read
the keyring once (another process may have just rotated the file).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from mlxmanager import config

ALG = {"alg": "dir", "enc": "A256GCM"}


class SecretError(Exception):
    """A secret could not be decrypted (unknown key id or a tampered token)."""


@dataclass(frozen=True)
class Key:
    kid: str
    key: OctKey

    def __repr__(self) -> str:  # never show key material
        return f"Key(kid={self.kid!r})"


def _derive(secret: str) -> Key:
    raw = hashlib.sha256(b"mlxmanager-credentials:" + secret.encode()).digest()
    kid = hashlib.sha256(b"kid:" + raw).hexdigest()[:16]
    return Key(kid=kid, key=OctKey.import_key(raw))


def key_file() -> Path:
    return Path(settings.MLXM_CREDENTIALS_KEY_FILE)


def _secrets() -> list[str]:
    env = os.environ.get("MLXM_CREDENTIALS_KEY", "")
    if env.strip():
        return [s.strip() for s in env.split(",") if s.strip()]
    text = config.read_or_create_secret(key_file())
    return [line.strip() for line in text.splitlines() if line.strip()]


class Keyring:
    def __init__(self) -> None:
        self._keys: list[Key] | None = None
        self._lock = threading.Lock()

    def keys(self) -> list[Key]:
        if self._keys is None:
            with self._lock:
                if self._keys is None:
                    self._keys = [_derive(s) for s in _secrets()]
        return self._keys

    def reload(self) -> None:
        with self._lock:
            self._keys = None

    @property
    def current(self) -> Key:
        return self.keys()[0]

    def find(self, kid: str) -> Key | None:
        for k in self.keys():
            if k.kid == kid:
                return k
        self.reload()
        return next((k for k in self.keys() if k.kid == kid), None)


keyring = Keyring()


def encrypt(plaintext: str) -> tuple[str, str]:
    """(compact JWE, key id) for `plaintext` under the current key."""
    key = keyring.current
    token = jwe.encrypt_compact({**ALG, "kid": key.kid}, plaintext.encode(), key.key)
    return token, key.kid


def kid_of(token: str) -> str:
    try:
        head = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        return str(header.get("kid", ""))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SecretError("not a JWE token") from exc


def decrypt(token: str) -> str:
    kid = kid_of(token)
    key = keyring.find(kid)
    if key is None:
        raise SecretError(f"the key '{kid}' that sealed this secret is not in the keyring")
    try:
        return jwe.decrypt_compact(token, key.key, algorithms=["dir", "A256GCM"]).plaintext.decode()  # type: ignore[union-attr]
    except JoseError as exc:
        raise SecretError("the secret could not be decrypted") from exc


def new_secret() -> str:
    return secrets.token_urlsafe(48)


def prepend_key_file(secret: str) -> None:
    """Make `secret` the current key in the key file, keeping the old ones for decryption."""
    path = key_file()
    old = [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join([secret, *old]) + "\n")
    os.replace(tmp, path)
    keyring.reload()


def write_key_file(secrets_: list[str]) -> None:
    path = key_file()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(secrets_) + "\n")
    os.replace(tmp, path)
    keyring.reload()


def key_file_secrets() -> list[str]:
    return _secrets()
