"""Reads for routing rules, and the gateway's in-memory route table.

The table (enabled rules in order, compiled matchers, credentials decrypted) is rebuilt at
once after a change in this process, and in the background once it is older than
`MLXM_ROUTES_CACHE_SECONDS`, so a request normally costs no query here. Other web
processes see a change within that TTL (plus one reload).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from mlxmanager.credentials.selectors import UpstreamConfig, upstream_config
from mlxmanager.rules.matching import compile_matcher
from mlxmanager.rules.models import Rule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteTarget:
    kind: str  # "local" or "cloud"
    profile: str = ""
    upstream: UpstreamConfig | None = None
    model: str = ""  # upstream model name; blank means the requested one
    unavailable: str = ""  # why this target can't be used (disabled credential, bad key)

    @property
    def label(self) -> str:
        if self.kind == "local":
            return f"local:{self.profile}"
        assert self.upstream is not None
        return f"cloud:{self.upstream.name}"

    def upstream_model(self, requested: str) -> str:
        return self.model or requested


@dataclass(frozen=True)
class Route:
    rule_id: int
    rule_name: str
    timeout_s: float | None
    targets: tuple[RouteTarget, ...]


@dataclass
class RouteTable:
    entries: list[tuple[Callable[[str], bool], Route]] = field(default_factory=list)
    built_at: float = field(default_factory=time.monotonic)

    def match(self, model: str) -> Route | None:
        for matcher, route in self.entries:
            if matcher(model):
                return route
        return None


def rule_list() -> list[Rule]:
    return list(Rule.objects.prefetch_related("targets__credential").order_by("position", "id"))


def _target(t: Any) -> RouteTarget:
    if not t.credential_id:
        return RouteTarget(kind="local", profile=t.profile_name)
    cred = t.credential
    try:
        config = upstream_config(cred)
    except Exception:
        log.error("credential %s cannot be decrypted with the current keyring", cred.name)
        config = UpstreamConfig(cred.pk, cred.name, cred.provider, cred.protocol, cred.api_base, "")
        return RouteTarget(
            kind="cloud", upstream=config, model=t.upstream_model, unavailable="secret unreadable"
        )
    why = "" if cred.enabled else "credential disabled"
    return RouteTarget(kind="cloud", upstream=config, model=t.upstream_model, unavailable=why)


def load_routes() -> RouteTable:
    table = RouteTable()
    for rule in (
        Rule.objects.filter(enabled=True).prefetch_related("targets__credential").order_by("position", "id")
    ):
        route = Route(
            rule_id=rule.pk,
            rule_name=rule.name,
            timeout_s=rule.timeout_s,
            targets=tuple(_target(t) for t in rule.targets.all()),
        )
        table.entries.append((compile_matcher(rule.match_type, rule.pattern), route))
    return table


_table: RouteTable | None = None
_generation = 0  # bumped by every invalidation: a reload begun before it is not kept
_refresh: asyncio.Task[None] | None = None


def invalidate_routes() -> None:
    global _table, _generation
    _table = None
    _generation += 1


def _fresh(table: RouteTable | None) -> bool:
    return table is not None and time.monotonic() - table.built_at < settings.MLXM_ROUTES_CACHE_SECONDS


def routes() -> RouteTable:
    global _table
    table = _table
    if not _fresh(table):
        table = _table = load_routes()
    assert table is not None
    return table


async def _reload() -> RouteTable:
    global _table
    generation = _generation
    table = await sync_to_async(load_routes, thread_sensitive=False)()
    if generation == _generation:
        _table = table
    return table


async def _refresh_in_background() -> None:
    try:
        await _reload()
    except Exception:
        log.exception("reloading the routing rules failed; the previous table stays in use")
        if _table is not None:
            _table.built_at = time.monotonic()  # try again after another TTL, not per request


async def aroutes() -> RouteTable:
    """The route table. After a change in this process it is reloaded before use; when it is
    only older than the TTL (changes made by other processes), the request is served from it
    while a reload runs in the background, so no request waits for the database here."""
    global _refresh
    table = _table
    if table is None:
        return await _reload()
    loop = asyncio.get_running_loop()
    if not _fresh(table) and (_refresh is None or _refresh.done() or _refresh.get_loop() is not loop):
        # A clean context: the reload belongs to no request (audit record, thread context).
        _refresh = loop.create_task(_refresh_in_background(), context=contextvars.Context())
    return table


async def route_for(model: str) -> Route | None:
    """The route of the first enabled rule matching `model`; None: serve a local profile by name."""
    return (await aroutes()).match(model)


def explain(model: str) -> dict[str, Any]:
    """What the gateway would do with `model` (the rule tester). Reads fresh from the database."""
    from mlxmanager.profiles.models import Profile

    route = load_routes().match(model)
    enabled = set(Profile.objects.filter(enabled=True).values_list("name", flat=True))
    if route is None:
        if model in enabled:
            return {"model": model, "rule": None, "targets": [{"label": f"local:{model}", "ok": True,
                    "note": "no rule matches: served by the local profile of that name"}]}  # fmt: skip
        return {"model": model, "rule": None, "targets": [],
                "note": "no rule matches and no local profile has that name: 404"}  # fmt: skip
    targets = []
    from mlxmanager.sitesettings.selectors import DEFAULT_TARGET, default_profile_name

    default = default_profile_name()
    for i, t in enumerate(route.targets):
        note = "primary" if i == 0 else f"fallback {i}"
        ok = True
        if t.kind == "local" and t.profile == DEFAULT_TARGET:
            if default in enabled:
                note += f": the default model, now '{default}'"
            else:
                ok, note = False, note + ": no default model is set (skipped)"
        elif t.kind == "local" and t.profile not in enabled:
            ok, note = False, note + ": no enabled local profile of that name (skipped)"
        elif t.unavailable:
            ok, note = False, f"{note}: {t.unavailable} (skipped)"
        elif t.kind == "cloud":
            note = f"{note}: upstream model '{t.upstream_model(model)}'"
        targets.append({"label": t.label, "ok": ok, "note": note})
    return {"model": model, "rule": route.rule_name, "rule_id": route.rule_id, "timeout_s": route.timeout_s,
            "targets": targets}  # fmt: skip
