"""Logging out ends the user's stream tokens (mlxmanager/accounts/tokens.py); signing in with a
temporary password flags the session (mlxmanager/accounts/middleware.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.dispatch import receiver

from mlxmanager.accounts.tokens import tokens_revoke


@receiver(user_logged_out, dispatch_uid="mlxmanager.accounts.revoke_stream_tokens")
def _revoke_stream_tokens(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None and user.pk is not None:
        tokens_revoke(user_id=user.pk)


@receiver(user_logged_in, dispatch_uid="mlxmanager.accounts.password_change_required")
def _flag_temporary_password(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Signed in with a temporary password: the middleware sends them to choose their own."""
    from mlxmanager.accounts.passwords import SESSION_FLAG, must_change

    session = getattr(request, "session", None)
    if session is not None and user is not None and must_change(user):
        session[SESSION_FLAG] = True
