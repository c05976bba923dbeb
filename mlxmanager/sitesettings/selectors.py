"""Reading settings: the database value where an admin set one, else the environment's.

Rows are cached per process for MLXM_SETTINGS_CACHE_SECONDS (5 by default) and dropped at once
when this process saves, so other web processes and the downloader see a change within that
time. Safe to call from async code: there the rows are read on a short-lived thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections

from mlxmanager.sitesettings.registry import BY_KEY, SPECS, Spec

log = logging.getLogger(__name__)

_cache: tuple[float, dict[str, Any]] | None = None


def invalidate() -> None:
    global _cache
    _cache = None


def _query() -> dict[str, Any]:
    from mlxmanager.sitesettings.models import SiteSetting

    return {row.key: row.value for row in SiteSetting.objects.filter(key__in=BY_KEY)}


def _query_on_thread() -> dict[str, Any]:
    try:
        return _query()
    finally:
        connections.close_all()


def overrides() -> dict[str, Any]:
    """The values set on the Settings page, by key (not the Hugging Face token)."""
    global _cache
    ttl = float(getattr(settings, "MLXM_SETTINGS_CACHE_SECONDS", 5))
    cached = _cache
    if cached is not None and time.monotonic() - cached[0] < ttl:
        return cached[1]
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            rows = _query()
        else:  # the ORM refuses an event loop's thread: one small query on another
            with ThreadPoolExecutor(1) as pool:
                rows = pool.submit(_query_on_thread).result(timeout=10)
    except (DatabaseError, RuntimeError, TimeoutError) as exc:
        # Not migrated yet (a command run before `migrate`), no database access (some tests),
        # or a database too slow now: the defaults, and another try next time.
        log.debug("settings not read from the database: %s", exc)
        return cached[1] if cached is not None else {}
    _cache = (time.monotonic(), rows)
    return rows


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) or None if raw else None
    except ValueError:
        return None


_BUILT_IN: dict[str, Callable[[Spec], Any]] = {
    "max_queue": lambda _s: settings.MLXM_QUEUE_LIMITS[0],
    "max_user_concurrent": lambda _s: settings.MLXM_QUEUE_LIMITS[1],
    "queue_timeout": lambda _s: settings.MLXM_QUEUE_LIMITS[2],
    "local_timeout": lambda _s: _env_float("MLXM_LOCAL_TIMEOUT"),
    "default_model": lambda _s: None,
    "model_aliases": lambda _s: {},
    "audit_retention_days": lambda _s: settings.MLXM_AUDIT_RETENTION_DAYS,
    "hf_endpoint": lambda _s: settings.MLXM_HF_ENDPOINT,
    "hf_token": lambda _s: None,
    "cors_origins": lambda _s: list(settings.MLXM_CORS_ORIGINS),
    "memory_limit": lambda s: s.env_raw() or os.environ.get("MLXM_MEMORY_LIMIT_BYTES") or "75%",
    "prompt_cache": lambda s: s.env_raw() or "512MiB",
}


def default(key: str) -> Any:
    """What the environment (or the built-in default) gives `key`: only that key is worked out
    (it is read on the request path)."""
    spec = BY_KEY[key]
    built_in = _BUILT_IN.get(key)
    return built_in(spec) if built_in is not None else spec.env_raw() or None


def value(key: str) -> Any:
    """The setting in effect in this process: the Settings page's value, else the default."""
    found = overrides()
    return found[key] if key in found else default(key)


def rows() -> list[dict[str, Any]]:
    """Every setting for the page and the API: value, default, source, where it applies."""
    from mlxmanager.downloads import hub

    found = overrides()
    out = []
    for spec in SPECS:
        if spec.secret:
            source = hub.token_source()
            out.append(_row(spec, None, None, "database" if source == "stored" else source or "unset"))
            continue
        stored = key_in = spec.key in found
        out.append(
            _row(spec, found.get(spec.key) if key_in else default(spec.key), default(spec.key),
                 "database" if stored else ("environment" if spec.env_raw() else "default"))
        )  # fmt: skip
    return out


def _row(spec: Spec, current: Any, fallback: Any, source: str) -> dict[str, Any]:
    return {"key": spec.key, "label": spec.label, "env": spec.env, "applies": spec.applies,
            "help": spec.help, "value": current, "default": fallback, "source": source,
            "secret": spec.secret}  # fmt: skip


DEFAULT_TARGET = "@default"  # a rule's local target that means "the default model"


def default_profile_name() -> str | None:
    """The default model: the Settings page's choice, else the enabled profile marked default."""
    from mlxmanager.profiles.models import Profile

    chosen = value("default_model")
    if chosen:
        return str(chosen)
    return Profile.objects.filter(is_default=True, enabled=True).values_list("name", flat=True).first()


async def aprofile_name(model: str) -> str:
    """The profile that serves `model`: an alias's profile, the default model for
    DEFAULT_TARGET, else `model` itself."""
    from asgiref.sync import sync_to_async

    if model == DEFAULT_TARGET:
        name = await sync_to_async(default_profile_name, thread_sensitive=False)()
        return name or model
    aliases = value("model_aliases") or {}
    return str(aliases.get(model, model))
