"""Changing settings: validated, stored, audited, then applied where the processes can take
them (the web side through the cached accessor, the worker over its protocol)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone

from mlxmanager.audit.services import log_action
from mlxmanager.errors import DomainError
from mlxmanager.sitesettings import selectors
from mlxmanager.sitesettings.models import SiteSetting
from mlxmanager.sitesettings.registry import (
    APPLIES,
    BY_KEY,
    WORKER,
    Invalid,
    memory_limit_bytes,
    prompt_cache_bytes,
)

log = logging.getLogger(__name__)

WORKER_TIMEOUT_S = 5.0


class SettingsInvalid(DomainError):
    """One or more values refused; `errors` maps each setting to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        key, message = next(iter(errors.items()))
        super().__init__(message, param=key, code="invalid_setting")
        self.errors = errors


def _blank(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """{key: stored value or None (clear)} for `values` ({key: raw}); SettingsInvalid otherwise."""
    errors: dict[str, str] = {}
    parsed: dict[str, Any] = {}
    for key, raw in values.items():
        spec = BY_KEY.get(key)
        if spec is None:
            errors[str(key)[:64]] = f"'{str(key)[:64]}' is not a setting"
            continue
        if _blank(raw) or (spec.key in ("model_aliases", "cors_origins") and raw in ({}, [])):
            parsed[key] = None
            continue
        try:
            parsed[key] = spec.parse(raw)
        except Invalid as exc:
            errors[key] = f"{spec.label}: {exc}"
    if errors:
        raise SettingsInvalid(errors)
    return parsed


def settings_update(*, values: dict[str, Any], user: Any = None) -> dict[str, Any]:
    """Store `values` ({key: raw}; blank or None goes back to the default), audit the change
    and apply it. Returns {"changed": [...], "applied": {key: where}, "worker": message}."""
    parsed = validate(values)
    changes: dict[str, list[Any]] = {}
    with transaction.atomic():
        for key, new in parsed.items():
            if BY_KEY[key].secret:
                changes.update(_set_hub_token(new, user))
                continue
            row = SiteSetting.objects.filter(key=key).first()
            old = row.value if row else None
            if old == new:
                continue
            if new is None:
                SiteSetting.objects.filter(key=key).delete()
            else:
                SiteSetting.objects.update_or_create(
                    key=key, defaults={"value": new, "updated_at": timezone.now(), "updated_by": user}
                )
            changes[key] = [old, new]
        if changes:
            log_action(None, "mlxmanager.settings.changed", user=user, data=changes,
                       object_type="settings", object_repr="Settings")  # fmt: skip
    selectors.invalidate()
    if "hf_token" in changes:
        from mlxmanager.downloads import hub

        hub.forget_stored_token()
    result: dict[str, Any] = {
        "changed": sorted(changes),
        "applied": {k: APPLIES[BY_KEY[k].applies] for k in sorted(changes)},
        "worker": None,
    }
    if any(BY_KEY[k].applies == WORKER for k in changes):
        result["worker"] = push_to_worker()
    return result


def _set_hub_token(token: str | None, user: Any) -> dict[str, list[Any]]:
    from mlxmanager.downloads import services as downloads

    if token is None:
        return {"hf_token": ["(set)", None]} if downloads.hub_token_clear(user=user) else {}
    downloads.hub_token_set(token=token, user=user)
    return {"hf_token": ["(changed)", "(changed)"]}


def worker_config() -> dict[str, Any]:
    """The worker's run-time settings in effect (protocol.Configure's fields)."""
    memory = selectors.value("memory_limit")  # the saved value, else the environment's, else 75%
    limit = memory_limit_bytes(str(memory))
    return {
        "max_queue": selectors.value("max_queue"),
        "max_user": selectors.value("max_user_concurrent"),
        "queue_timeout_s": selectors.value("queue_timeout") or None,
        "memory_limit_bytes": limit,
        "prompt_cache_bytes": prompt_cache_bytes(str(selectors.value("prompt_cache")), limit),
    }


def worker_env() -> dict[str, str]:
    """The worker's settings from the Settings page as environment variables, for a worker
    started (or restarted) by `serve`: it begins with them."""
    selectors.invalidate()
    found = selectors.overrides()
    env = {}
    for key in ("memory_limit", "prompt_cache", "disk_cache_bytes", "max_queue", "max_user_concurrent",
                "queue_timeout"):  # fmt: skip
        if key in found and found[key] is not None:
            env[BY_KEY[key].env] = str(found[key])
    return env


async def _push(config: dict[str, Any]) -> str:
    from mlxmanager.pool.services import engine_session

    async with engine_session() as client:
        return await asyncio.wait_for(client.configure(**config), WORKER_TIMEOUT_S)


def push_to_worker() -> str:
    """Send the worker its settings now; a sentence saying what happened (never raises)."""
    try:
        config = worker_config()
    except ValueError as exc:
        return f"not sent to the worker: {exc}"
    try:
        return "the worker applied: " + async_to_sync(_push)(config)
    except Exception as exc:  # no worker, an old worker, a timeout: it starts with them next time
        log.info("settings not sent to the worker: %s", exc)
        return "the worker is not reachable now; it starts with these settings next time"
