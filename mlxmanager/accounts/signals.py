"""Logging out ends the user's stream tokens (mlxmanager/accounts/tokens.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from mlxmanager.accounts.tokens import tokens_revoke


@receiver(user_logged_out, dispatch_uid="mlxmanager.accounts.revoke_stream_tokens")
def _revoke_stream_tokens(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None and user.pk is not None:
        tokens_revoke(user_id=user.pk)
