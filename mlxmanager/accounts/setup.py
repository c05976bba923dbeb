"""The one-time setup link: the first admin, created in the browser.

While no user exists, `manage.py serve` makes a random token (`secrets.token_urlsafe(32)`)
and prints `http://HOST:PORT/setup/<token>` on its standard output (never through logging).
Only the token's SHA-256 is kept, in `<data dir>/setup_token` (mode 0600), so the file does
not hold the link. Opening the link puts that digest in the visitor's session and redirects
to `/setup/` (the token leaves the address bar and never appears in a form's action, a
Referer or an error log line); the form there creates the admin and logs them in. Each check
compares digests in constant time. The file is claimed (renamed away) before the admin is
created, so two submissions at once cannot both succeed, and deleted afterwards; once any
user exists every /setup/ address is a 404, whatever the token.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from django.conf import settings

TOKEN_FILE = "setup_token"  # noqa: S105  (a file name)
SESSION_KEY = "mlxm_setup_digest"


def _path() -> Path:
    return Path(settings.MLXM_DATA_DIR) / TOKEN_FILE


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def setup_token_issue() -> str:
    """A fresh token (the previous one stops working); its digest is written 0600."""
    token = secrets.token_urlsafe(32)
    path = _path()
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(digest_of(token))
    os.replace(tmp, path)
    return token


def setup_token_discard() -> None:
    with contextlib.suppress(OSError):
        _path().unlink()


def _stored_digest() -> str | None:
    try:
        stored = _path().read_text().strip()
    except OSError:
        return None
    return stored or None


def digest_matches(digest: str | None) -> bool:
    """Whether `digest` is the stored one (constant-time); False when none is stored."""
    stored = _stored_digest()
    if not stored or not digest:
        return False
    return hmac.compare_digest(stored.encode(), digest.encode())


def token_matches(token: str) -> bool:
    return bool(token) and len(token) <= 200 and digest_matches(digest_of(token))


def setup_token_claim(digest: str) -> Path | None:
    """Take the stored token for one admin creation: renamed away atomically, so a second
    submission finds nothing. None when it is not (or no longer) `digest`'s."""
    if not digest_matches(digest):
        return None
    claimed = _path().with_name(f".{TOKEN_FILE}.claimed.{secrets.token_hex(8)}")
    try:
        os.rename(_path(), claimed)
    except OSError:
        return None
    try:
        still = hmac.compare_digest(claimed.read_text().strip().encode(), digest.encode())
    except OSError:
        still = False
    if not still:  # replaced by a new `serve` between the check and the rename
        setup_token_release(claimed)
        return None
    return claimed


def setup_token_release(claimed: Path) -> None:
    """Put a claimed token back (the admin could not be created), unless a newer one is there."""
    with contextlib.suppress(OSError):
        os.link(claimed, _path())
    with contextlib.suppress(OSError):
        claimed.unlink()


def setup_token_spend(claimed: Path) -> None:
    with contextlib.suppress(OSError):
        claimed.unlink()
