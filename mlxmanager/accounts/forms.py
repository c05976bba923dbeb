"""The login form, throttled: after MAX_FAILURES wrong passwords for one username from one
address within WINDOW seconds, that pair is refused (even with the right password) until the
window has passed since the first failure. Counts live in Django's cache."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache

MAX_FAILURES = 5
WINDOW = 15 * 60


def _client_ip(request: Any) -> str:
    return str(getattr(request, "META", {}).get("REMOTE_ADDR") or "unknown")


def _cache_key(ip: str, username: str) -> str:
    digest = hashlib.sha256(f"{ip}\0{username.strip().lower()}".encode()).hexdigest()[:32]
    return f"mlxm:login-failures:{digest}"


class ThrottledLoginForm(AuthenticationForm):
    def clean(self) -> dict[str, Any]:
        username = str(self.data.get("username", ""))
        key = _cache_key(_client_ip(self.request), username)
        failures, first = cache.get(key, (0, 0.0))
        now = time.time()
        if failures >= MAX_FAILURES and now - first < WINDOW:
            minutes = max(1, math.ceil((WINDOW - (now - first)) / 60))
            raise forms.ValidationError(
                f"Too many failed attempts for this account from your address. Try again in {minutes} "
                f"minute{'s' if minutes != 1 else ''}.",
                code="throttled",
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            if not failures or now - first >= WINDOW:
                failures, first = 0, now
            cache.set(key, (failures + 1, first), WINDOW)
            raise
        cache.delete(key)
        return cleaned
