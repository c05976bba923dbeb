"""The pool in the management API (admins): its state, and load/unload/pin/unpin by profile."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Router, Schema

from mlxmanager.permissions import require_admin
from mlxmanager.pool import services
from mlxmanager.pool.selectors import pool_state

router = Router(tags=["pool"])


class MemoryOut(Schema):
    used_bytes: int
    limit_bytes: int
    # The worker process's own share: its runtime, the disk tier's pending copies, the headroom.
    process_bytes: int
    weights_bytes: int
    kv_bytes: int
    prompt_cache_bytes: int
    free_bytes: int
    mlx_active_bytes: int | None
    mlx_peak_bytes: int | None
    evictions: int


class LoadedOut(Schema):
    name: str
    profile: str | None
    profiles: list[str]
    path: str
    weight_bytes: int
    weights_form: str
    kv_bytes: int
    prompt_cache_bytes: int
    active_requests: int
    queued_requests: int
    tokens_per_s: float
    cache_hit_rate: float | None
    last_used: datetime | None
    pinned: bool
    kv_bits: int | None
    speculative: bool
    context_length: int | None
    keep_alive_s: float | None
    disk_cache_bytes: int = 0
    disk_cache_entries: int = 0
    memory_hit_rate: float | None = None
    disk_hit_rate: float | None = None


class PoolOut(Schema):
    worker: Literal["up", "down"]
    detail: str
    memory: MemoryOut
    queue_depth: int
    loading: str | None
    loaded: list[LoadedOut]
    not_loaded: list[str]


class ActionOut(Schema):
    message: str


@router.get("", response=PoolOut)
async def get_pool(request: HttpRequest) -> dict[str, Any]:
    require_admin(request, "see and change the pool")
    state = await pool_state()
    return {
        "worker": "up" if state.up else "down",
        "detail": state.detail,
        "memory": {
            "used_bytes": state.used_bytes,
            "limit_bytes": state.limit_bytes,
            "process_bytes": state.process_bytes,
            "weights_bytes": state.weights_bytes,
            "kv_bytes": state.kv_bytes,
            "prompt_cache_bytes": state.prompt_cache_bytes,
            "free_bytes": state.free_bytes,
            "mlx_active_bytes": state.mlx_active_bytes,
            "mlx_peak_bytes": state.mlx_peak_bytes,
            "evictions": state.evictions,
        },
        "queue_depth": state.queue_depth,
        "loading": state.loading,
        "loaded": [m.as_dict() for m in state.loaded],
        "not_loaded": [p.name for p in state.available],
    }


@router.post("/{profile_name}/{action}", response=ActionOut)
async def pool_action(
    request: HttpRequest, profile_name: str, action: Literal["load", "unload", "pin", "unpin"]
) -> dict[str, str]:
    """Load, unload, pin or unpin the model of a profile. Busy models can't be unloaded (409);
    a load that doesn't fit in memory even after evicting idle models is a 503."""
    require_admin(request, "see and change the pool")
    return {"message": await services.pool_action(profile_name=profile_name, action=action)}
