"""Password rules beyond Django's own validators (settings.AUTH_PASSWORD_VALIDATORS).

Django's UserAttributeSimilarityValidator compares the whole password with the username, so a
username repeated (`pw3pw3pw3` for `pw3`) passes it; these catch that, passwords of very few
different characters, and admin passwords shorter than 12 characters. Each is given the user
(saved or not) by `validate_password(password, user)`."""

from __future__ import annotations

import unicodedata
from typing import Any

from django.core.exceptions import ValidationError


class UsernameInPasswordValidator:
    """The password must not contain the username (case-insensitive; usernames of 3+ characters)."""

    def validate(self, password: str, user: Any = None) -> None:
        username = unicodedata.normalize("NFKC", str(getattr(user, "username", "") or "")).casefold()
        if len(username) >= 3 and username in unicodedata.normalize("NFKC", password).casefold():
            raise ValidationError("The password must not contain the username.", code="password_has_username")

    def get_help_text(self) -> str:
        return "Your password can't contain your username."


class DistinctCharactersValidator:
    """At least `min_distinct` different characters (refuses `aaaabbbbaaaa`, `pw3pw3pw3`)."""

    def __init__(self, min_distinct: int = 5) -> None:
        self.min_distinct = min_distinct

    def validate(self, password: str, user: Any = None) -> None:
        if len(set(password)) < self.min_distinct:
            raise ValidationError(
                f"The password must have at least {self.min_distinct} different characters.",
                code="password_too_repetitive",
            )

    def get_help_text(self) -> str:
        return f"Your password must have at least {self.min_distinct} different characters."


class AdminMinimumLengthValidator:
    """Admins (staff) need a longer password: they can read the audit log and manage keys."""

    def __init__(self, min_length: int = 12) -> None:
        self.min_length = min_length

    def validate(self, password: str, user: Any = None) -> None:
        if getattr(user, "is_staff", False) and len(password) < self.min_length:
            raise ValidationError(
                f"An admin's password must be at least {self.min_length} characters long.",
                code="password_too_short_for_admin",
            )

    def get_help_text(self) -> str:
        return f"An admin's password must be at least {self.min_length} characters long."
