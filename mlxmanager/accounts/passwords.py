"""Password lifecycle: a user changes their own; an admin resets someone's, either with a
one-time link (Django's password-reset token: it stops working once the password changes, and
after PASSWORD_RESET_TIMEOUT) or with a temporary password that must be changed at the next
sign-in (PasswordChangeRequired, enforced by mlxmanager/accounts/middleware.py).

Both resets are audited ("mlxmanager.user.password_reset", with the method; never the secret).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from mlxmanager.accounts.models import PasswordChangeRequired
from mlxmanager.audit.services import log_action
from mlxmanager.errors import Conflict, NotFound

SESSION_FLAG = "mlxm_must_change_password"
RESET_METHODS = ("link", "temporary")


@dataclass(frozen=True)
class Reset:
    username: str
    method: str  # "link" or "temporary"
    secret: str  # the link's path, or the temporary password: shown to the admin once


def must_change(user: Any) -> bool:
    return bool(user.pk) and PasswordChangeRequired.objects.filter(user_id=user.pk).exists()


def changed(user: Any) -> None:
    """The user chose their own password: no more "must change"."""
    PasswordChangeRequired.objects.filter(user_id=user.pk).delete()


def reset_link_path(user: Any) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    return reverse(
        "password-reset-confirm", kwargs={"uidb64": uid, "token": default_token_generator.make_token(user)}
    )


def temporary_password(user: Any = None) -> str:
    """16 URL-safe characters (96 bits) that pass the configured validators for `user`."""
    while True:
        candidate = secrets.token_urlsafe(12)
        try:
            validate_password(candidate, user=user)
        except ValidationError:  # e.g. it happened to contain a short username: draw again
            continue
        return candidate


def password_reset(*, user_id: int, method: str, actor: Any = None) -> Reset:
    """An admin resets someone else's password (yours: change it on your own page)."""
    if method not in RESET_METHODS:
        raise Conflict("the reset method is a one-time link or a temporary password", param="method")
    with transaction.atomic():
        user = get_user_model().objects.select_for_update().filter(pk=user_id).first()
        if user is None:
            raise NotFound("no such user")
        if actor is not None and actor.pk == user.pk:
            raise Conflict(
                "to change your own password, use your password page (it asks for the current one)"
            )
        if method == "link":
            secret = reset_link_path(user)
        else:
            secret = temporary_password(user)
            user.set_password(secret)  # ends the user's other sessions (their auth hash changes)
            user.save(update_fields=["password"])
            PasswordChangeRequired.objects.update_or_create(user_id=user.pk)
        log_action(
            user,
            "mlxmanager.user.password_reset",
            user=actor,
            object_type="user",
            data={"method": "one-time link" if method == "link" else "temporary password"},
        )
    return Reset(username=user.get_username(), method=method, secret=secret)
