"""The login form, throttled: after MAX_FAILURES wrong passwords for one username from one
address within WINDOW seconds, that pair is refused (even with the right password) until the
window has passed since the first failure. Counts live in Django's cache.

The username is keyed the way Django signs it in: NFKC-normalised (UsernameField does that, so
`ａlice` with a full-width a is `alice`), stripped, and case-folded, so look-alike spellings of
one account share one count. The count is taken atomically (cache.add, then cache.incr) before
the password is checked: attempts sent at once can't all read "4 failures" and all be checked."""

from __future__ import annotations

import hashlib
import math
import time
import unicodedata
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache

MAX_FAILURES = 5
WINDOW = 15 * 60


def _client_ip(request: Any) -> str:
    return str(getattr(request, "META", {}).get("REMOTE_ADDR") or "unknown")


def normalize_username(username: str) -> str:
    """The throttle's spelling of a username: NFKC (as AbstractBaseUser.normalize_username and
    UsernameField do), surrounding spaces stripped (the form strips them), case-folded."""
    return unicodedata.normalize("NFKC", username).strip().casefold()


def _cache_key(ip: str, username: str) -> str:
    digest = hashlib.sha256(f"{ip}\0{normalize_username(username)}".encode()).hexdigest()[:32]
    return f"mlxm:login-failures:{digest}"


def _take_attempt(key: str) -> tuple[int, float]:
    """Count this attempt (atomically) and return (attempts in the window so far, including
    this one; when the window started)."""
    now = time.time()
    cache.add(key + ":first", now, WINDOW)
    cache.add(key, 0, WINDOW)
    try:
        attempts = cache.incr(key)
    except ValueError:  # expired between add and incr: this attempt starts a new window
        cache.add(key, 1, WINDOW)
        attempts = 1
    first = cache.get(key + ":first", now)
    return int(attempts), float(first)


class ThrottledLoginForm(AuthenticationForm):
    def clean(self) -> dict[str, Any]:
        username = str(self.data.get("username", ""))
        key = _cache_key(_client_ip(self.request), username)
        attempts, first = _take_attempt(key)
        if attempts > MAX_FAILURES:
            minutes = max(1, math.ceil((WINDOW - (time.time() - first)) / 60))
            raise forms.ValidationError(
                f"Too many failed attempts for this account from your address. Try again in {minutes} "
                f"minute{'s' if minutes != 1 else ''}.",
                code="throttled",
            )
        # A wrong password leaves this attempt counted; the right one clears the count.
        cleaned = super().clean()
        cache.delete_many([key, key + ":first"])
        return cleaned

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        from mlxmanager.sso.selectors import current
        from mlxmanager.sso.services import password_login_allowed

        if not password_login_allowed(user):
            raise forms.ValidationError(
                f"Members sign in with {current().provider_name}: password sign-in is for admins only.",
                code="sso_only",
            )
