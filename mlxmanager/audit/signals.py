"""Model-level audit for users, API keys and profiles, whose services live in other apps.

Who made the change comes from the request being served (`actor`, set by the middleware);
management commands and the system show as blank. Only field names and safe values are
kept: password hashes and key digests appear as "(changed)".
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.db.models.signals import post_delete, post_save, pre_save

log = logging.getLogger(__name__)

_actor: ContextVar[Any] = ContextVar("mlxm_audit_actor", default=None)
# "name (prefix…)" of the admin token a /api request came with (mlxmanager/permissions.py).
_via: ContextVar[str] = ContextVar("mlxm_audit_via", default="")

# Fields whose changes are bookkeeping, not admin changes.
_IGNORED = {"last_login", "last_used_at", "date_joined", "created_at", "updated_at"}
_TRACKED: dict[str, tuple[str, tuple[str, ...]]] = {
    # model label: (audit noun, fields recorded)
    settings.AUTH_USER_MODEL: (
        "user",
        ("username", "email", "is_active", "is_staff", "is_superuser", "password"),
    ),
    "accounts.ApiKey": (
        "apikey",
        (
            "name",
            "user_id",
            "expires_at",
            "revoked_at",
            "digest",
            "allowed_models",
            "rpm_limit",
            "tokens_per_day",
        ),
    ),
    "profiles.Profile": (
        "profile",
        (
            "name",
            "model_path",
            "kind",
            "description",
            "defaults",
            "system_prompt",
            "context_length",
            "max_output_tokens",
            "chat_template_kwargs",
            "tool_parser",
            "reasoning_parser",
            "pinned",
            "preload",
            "keep_alive_seconds",
            "max_concurrent",
            "draft_model_path",
            "num_draft_tokens",
            "kv_bits",
            "prompt_cache_bytes",
            "is_default",
            "enabled",
        ),
    ),
}


def set_actor(user: Any) -> Any:
    return _actor.set(user)


def set_via(detail: str) -> Any:
    return _via.set(detail)


def reset_via(token: Any) -> None:
    try:
        _via.reset(token)
    except ValueError:
        _via.set("")


def current_via() -> str:
    return _via.get()


def reset_actor(token: Any) -> None:
    try:
        _actor.reset(token)
    except ValueError:
        _actor.set(None)


def _current_actor() -> Any:
    user = _actor.get()
    try:
        return user if user is not None and user.is_authenticated else None
    except Exception:  # a lazy user that cannot load outside its request
        return None


def _snapshot(instance: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: getattr(instance, f, None) for f in fields}


def _pre_save(sender: Any, instance: Any, raw: bool = False, update_fields: Any = None, **kw: Any) -> None:
    if raw or instance.pk is None:
        return
    _, fields = _TRACKED[sender._meta.label]
    if update_fields is not None and set(update_fields) <= _IGNORED:
        return
    try:
        old = sender._default_manager.filter(pk=instance.pk).values(*fields).first()
    except Exception:
        old = None
    instance._mlxm_audit_before = old


def _post_save(
    sender: Any, instance: Any, created: bool, raw: bool = False, update_fields: Any = None, **kw: Any
) -> None:
    if raw:
        return
    from mlxmanager.audit.services import changes, log_action

    noun, fields = _TRACKED[sender._meta.label]
    after = _snapshot(instance, fields)
    try:
        if created:
            data = {k: v for k, v in changes({}, after).items() if after.get(k) not in (None, "", {}, [])}
            log_action(
                instance, f"mlxmanager.{noun}.created", user=_current_actor(), data=data, object_type=noun
            )
            return
        before = getattr(instance, "_mlxm_audit_before", None)
        if before is None:
            return
        instance._mlxm_audit_before = None
        diff = changes(before, after)
        if not diff:
            return
        action = f"mlxmanager.{noun}.changed"
        if noun == "apikey" and set(diff) == {"revoked_at"} and after.get("revoked_at"):
            action = "mlxmanager.apikey.revoked"
        log_action(instance, action, user=_current_actor(), data=diff, object_type=noun)
    except Exception:
        log.exception("could not audit a change to %s", sender._meta.label)


def _post_delete(sender: Any, instance: Any, **kw: Any) -> None:
    from mlxmanager.audit.services import log_action

    noun, _ = _TRACKED[sender._meta.label]
    try:
        log_action(
            None,
            f"mlxmanager.{noun}.deleted",
            user=_current_actor(),
            object_type=noun,
            object_repr=str(instance),
            data={"id": instance.pk},
        )
    except Exception:
        log.exception("could not audit a deletion of %s", sender._meta.label)


def connect() -> None:
    from django.apps import apps

    for label in _TRACKED:
        model = apps.get_model(label)
        uid = f"mlxm-audit-{label}"
        pre_save.connect(_pre_save, sender=model, dispatch_uid=uid + "-pre")
        post_save.connect(_post_save, sender=model, dispatch_uid=uid + "-post")
        post_delete.connect(_post_delete, sender=model, dispatch_uid=uid + "-del")
