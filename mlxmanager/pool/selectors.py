"""Reads of the model pool: the worker's health joined with the profiles that use it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from inference.client import EngineDeadError
from mlxmanager.pool.charts import Series, history_charts
from mlxmanager.pool.services import engine_session
from mlxmanager.profiles.models import Profile

HEALTH_TIMEOUT_S = 3.0


@dataclass
class LoadedModel:
    name: str  # the engine's name: the profile that used it last
    profile: str | None  # the profile the page's buttons act on
    profiles: list[str]  # every enabled profile these weights serve
    path: str
    weight_bytes: int
    cache_bytes: int
    kv_bytes: int
    weights_form: str
    active: int
    queued: int
    tokens_per_s: float
    hit_rate: float | None
    last_used: datetime | None
    pinned: bool
    kv_bits: int | None
    speculative: bool
    context_length: int | None
    keep_alive_s: float | None
    kind: str = "llm"
    # The prompt cache's disk tier (<data dir>/kv/): this model's entries and bytes there,
    # and the shares of prompt tokens served from each tier.
    disk_bytes: int = 0
    disk_entries: int = 0
    memory_hit_rate: float | None = None
    disk_hit_rate: float | None = None
    # Each serving profile and whether it is pinned: pins are per profile; the weights stay
    # pinned (`pinned`) while any of them is.
    pins: list[tuple[str, bool]] = field(default_factory=list)

    memory_pct: float = 0.0  # share of the pool's limit

    @property
    def kind_label(self) -> str:
        return dict(Profile.KIND_CHOICES).get(self.kind, self.kind)

    @property
    def hit_pct(self) -> float | None:
        return None if self.hit_rate is None else round(self.hit_rate * 100, 1)

    @property
    def memory_hit_pct(self) -> float | None:
        return None if self.memory_hit_rate is None else round(self.memory_hit_rate * 100, 1)

    @property
    def disk_hit_pct(self) -> float | None:
        return None if self.disk_hit_rate is None else round(self.disk_hit_rate * 100, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "profile": self.profile,
            "profiles": self.profiles,
            "path": self.path,
            "weight_bytes": self.weight_bytes,
            "weights_form": self.weights_form,
            "kv_bytes": self.kv_bytes,
            "prompt_cache_bytes": self.cache_bytes,
            "active_requests": self.active,
            "queued_requests": self.queued,
            "tokens_per_s": self.tokens_per_s,
            "cache_hit_rate": self.hit_rate,
            "last_used": self.last_used,
            "pinned": self.pinned,
            "kv_bits": self.kv_bits,
            "speculative": self.speculative,
            "context_length": self.context_length,
            "keep_alive_s": self.keep_alive_s,
            "kind": self.kind,
            "disk_cache_bytes": self.disk_bytes,
            "disk_cache_entries": self.disk_entries,
            "memory_hit_rate": self.memory_hit_rate,
            "disk_hit_rate": self.disk_hit_rate,
        }


@dataclass
class PoolState:
    up: bool
    detail: str = ""
    used_bytes: int = 0
    limit_bytes: int = 0
    # The limit's parts (the worker's Pool.memory_stats): the worker process's own (its runtime,
    # the disk tier's pending copies, the headroom), weights, live KV, prompt caches.
    process_bytes: int = 0
    weights_bytes: int = 0
    kv_bytes: int = 0
    prompt_cache_bytes: int = 0
    free_bytes: int = 0
    # What MLX reports: its arrays now, and the most they held since the worker started.
    mlx_active_bytes: int | None = None
    mlx_peak_bytes: int | None = None
    evictions: int = 0
    queue_depth: int = 0
    loading: str | None = None
    loaded: list[LoadedModel] = field(default_factory=list)
    available: list[Profile] = field(default_factory=list)  # enabled profiles not loaded
    charts: list[Series] = field(default_factory=list)

    @property
    def used_pct(self) -> float:
        return min(100.0, round(self.used_bytes / self.limit_bytes * 100, 1)) if self.limit_bytes else 0.0


def _engine_key(path: str, speculative: bool, kv_bits: int | None) -> tuple[str, bool, int | None]:
    return (os.path.normpath(path), speculative, kv_bits)


def _profile_key(pr: Profile) -> tuple[str, bool, int | None]:
    return _engine_key(pr.model_path, bool(pr.draft_model_path), pr.kv_bits)


def _loaded(m: dict[str, Any], by_key: dict[tuple[str, bool, int | None], list[Profile]]) -> LoadedModel:
    users = by_key.get(_engine_key(m.get("path", ""), bool(m.get("speculative")), m.get("kv_bits")), [])
    names = [pr.name for pr in users]
    prompt_tokens = int(m.get("prompt_tokens") or 0)

    def share(key: str) -> float | None:
        return (int(m.get(key) or 0) / prompt_tokens) if prompt_tokens else None

    last_used = m.get("last_used")
    return LoadedModel(
        name=m.get("name", "?"),
        profile=m.get("name") if m.get("name") in names else (names[0] if names else None),
        profiles=names,
        path=m.get("path", ""),
        weight_bytes=int(m.get("weight_bytes") or 0),
        cache_bytes=int(m.get("prompt_cache_bytes") or 0),
        kv_bytes=int(m.get("kv_bytes") or 0),
        weights_form=str(m.get("weights_form") or ""),
        active=int(m.get("active_requests") or 0),
        queued=int(m.get("queued_requests") or 0),
        tokens_per_s=float(m.get("tokens_per_s") or 0.0),
        hit_rate=(int(m.get("cache_hit_tokens") or 0) / prompt_tokens) if prompt_tokens else None,
        last_used=datetime.fromtimestamp(last_used, tz=UTC) if last_used else None,
        pinned=bool(m.get("pinned")),
        kv_bits=m.get("kv_bits"),
        speculative=bool(m.get("speculative")),
        context_length=m.get("context_length"),
        keep_alive_s=m.get("keep_alive_s"),
        kind=str(m.get("kind") or "llm"),
        disk_bytes=int(m.get("disk_cache_bytes") or 0),
        disk_entries=int(m.get("disk_cache_entries") or 0),
        memory_hit_rate=share("memory_hit_tokens"),
        disk_hit_rate=share("disk_hit_tokens"),
        pins=[(pr.name, pr.pinned) for pr in users],
    )


async def pool_state(*, now: float | None = None) -> PoolState:
    """What the worker holds now, which enabled profiles could be loaded, and the last hour."""
    profiles = [pr async for pr in Profile.objects.filter(enabled=True).order_by("name")]
    try:
        async with engine_session() as client:
            health = await client.health(timeout=HEALTH_TIMEOUT_S)
    except EngineDeadError as exc:
        return PoolState(up=False, detail=str(exc), available=profiles)
    by_key: dict[tuple[str, bool, int | None], list[Profile]] = {}
    for pr in profiles:
        by_key.setdefault(_profile_key(pr), []).append(pr)
    loaded = [_loaded(m, by_key) for m in health.get("models", [])]
    served = {name for m in loaded for name in m.profiles}
    memory = health.get("memory") or {}
    limit = int(memory.get("limit_bytes") or 0)
    for m in loaded:
        m.memory_pct = (m.weight_bytes + m.kv_bytes + m.cache_bytes) / limit * 100 if limit else 0.0
    mlx_active, mlx_peak = memory.get("mlx_active_bytes"), memory.get("mlx_peak_bytes")
    return PoolState(
        up=True,
        used_bytes=int(memory.get("used_bytes") or 0),
        limit_bytes=limit,
        process_bytes=sum(
            int(memory.get(k) or 0) for k in ("runtime_bytes", "disk_pending_bytes", "headroom_bytes")
        ),
        weights_bytes=int(memory.get("weights_bytes") or 0),
        kv_bytes=int(memory.get("kv_bytes") or 0),
        prompt_cache_bytes=int(memory.get("prompt_cache_bytes") or 0),
        free_bytes=int(memory.get("free_bytes") or 0),
        mlx_active_bytes=int(mlx_active) if mlx_active is not None else None,
        mlx_peak_bytes=int(mlx_peak) if mlx_peak is not None else None,
        evictions=int(memory.get("evictions") or 0),
        queue_depth=int(health.get("queue_depth") or 0),
        loading=health.get("loading"),
        loaded=sorted(loaded, key=lambda m: m.name),
        available=[pr for pr in profiles if pr.name not in served],
        charts=history_charts(
            health.get("history") or [],
            now=now if now is not None else time.time(),
            current=(sum(m.tokens_per_s for m in loaded), int(memory.get("used_bytes") or 0)),
        ),
    )
