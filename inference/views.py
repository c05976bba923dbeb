"""Health endpoint. Anyone gets a bare liveness answer ({"status": "ok"}, 200; "degraded", 503
while the worker is down); the details (worker pid, uptime, queue, loaded models, why the worker
is down) are for a logged-in admin, or a monitor sending `Authorization: Bearer
<MLXM_METRICS_TOKEN>` when that setting is set. No secrets either way."""

from __future__ import annotations

import hmac
import os
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST

from inference import upstream
from inference.client import EngineDeadError
from inference.fleet import get_engine_client
from mlxmanager import metrics
from mlxmanager.audit import recorder as rec
from mlxmanager.permissions import is_admin


def _has_metrics_token(request: HttpRequest) -> bool:
    token = str(getattr(settings, "MLXM_METRICS_TOKEN", "") or "")
    auth = request.headers.get("Authorization", "")
    return (
        bool(token) and auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].encode(), token.encode())
    )


async def _may_see_details(request: HttpRequest) -> bool:
    if _has_metrics_token(request):
        return True
    auser = getattr(request, "auser", None)  # set by AuthenticationMiddleware
    return auser is not None and is_admin(await auser())


async def health_details() -> tuple[int, dict[str, Any]]:
    """The admin's view of /healthz, as (status code, body): also what a debug report keeps."""
    web = {"state": "up"}
    try:
        worker = await get_engine_client().health()
    except EngineDeadError as exc:
        return 503, {"status": "degraded", "web": web, "worker": {"state": "down", "detail": str(exc)}}
    models = worker.get("models", [])
    memory = worker.get("memory") or {}
    hit = sum(m.get("cache_hit_tokens", 0) for m in models)
    seen = sum(m.get("prompt_tokens", 0) for m in models)

    def rate(key: str) -> float:  # a share of the prompt tokens seen
        return round(sum(m.get(key, 0) for m in models) / seen, 4) if seen else 0.0

    body = {
        "status": "ok",
        "web": web,
        "worker": {
            "state": "up",
            "pid": worker.get("pid"),
            "uptime_s": worker.get("uptime_s"),
            "queue_depth": worker.get("queue_depth", 0),
            "active_requests": worker.get("active_requests", 0),
            "loading": worker.get("loading"),
            "draining": bool(worker.get("draining")),
            "prompt_cache_hit_rate": round(hit / seen, 4) if seen else 0.0,
            # The prompt cache's tiers apart: memory, and disk (<data dir>/kv/).
            "prompt_cache_memory_hit_rate": rate("memory_hit_tokens"),
            "prompt_cache_disk_hit_rate": rate("disk_hit_tokens"),
            # The memory limit and its parts (inference/worker/pool.py), MLX's own counts, and
            # the worker process's resident memory.
            "memory": {
                k: memory.get(k)
                for k in (
                    "limit_bytes",
                    "used_bytes",
                    "runtime_bytes",
                    "weights_bytes",
                    "kv_bytes",
                    "prompt_cache_bytes",
                    "disk_pending_bytes",
                    "headroom_bytes",
                    "free_bytes",
                    "mlx_active_bytes",
                    "mlx_cache_bytes",
                    "mlx_peak_bytes",
                    "rss_bytes",
                )
            },
            "loaded_models": [
                {
                    k: m.get(k)
                    for k in (
                        "name",
                        "active_requests",
                        "weight_bytes",
                        "weights_form",
                        "kv_bytes",
                        "prompt_cache_bytes",
                        "prompt_cache_entries",
                        "disk_cache_bytes",
                        "disk_cache_entries",
                        "prompt_tokens",
                        "cache_hit_tokens",
                        "memory_hit_tokens",
                        "disk_hit_tokens",
                        "tokens_generated",
                    )
                }
                for m in models
            ],
            # Python, MLX and its backend, the device and package versions (inference/worker/about.py).
            "about": worker.get("about") or {},
        },
    }
    return 200, body


async def healthz(request: HttpRequest) -> JsonResponse:
    if not await _may_see_details(request):
        try:
            await get_engine_client().health()
        except EngineDeadError:
            return JsonResponse({"status": "degraded"}, status=503)
        return JsonResponse({"status": "ok"})
    status, body = await health_details()
    return JsonResponse(body, status=status)


# ---- /metrics ----------------------------------------------------------------------------------


def _may_scrape(request: HttpRequest) -> bool:
    """The metrics token, or a peer in MLXM_METRICS_ALLOW_IPS; never anonymous by default."""
    if _has_metrics_token(request):
        return True
    allowed: tuple[str, ...] = settings.MLXM_METRICS_ALLOW_IPS
    peer = request.META.get("REMOTE_ADDR", "")
    return bool(peer) and ("*" in allowed or peer in allowed)


async def _worker_states() -> list[dict[str, Any]]:
    group = get_engine_client()
    states: list[dict[str, Any]] = []
    for name, client in group.clients():
        try:
            states.append({"name": name, "state": await client.health(timeout=2.0)})
        except (EngineDeadError, TimeoutError, OSError):
            states.append({"name": name, "state": None})
    return states


def _downloads() -> dict[str, int]:
    from django.db.models import Sum

    from mlxmanager.downloads.models import Download

    active = Download.objects.filter(status__in=Download.ACTIVE)
    agg = active.aggregate(done=Sum("bytes_done"), total=Sum("bytes_total"))
    return {
        "active": active.count(),
        "bytes_done": int(agg["done"] or 0),
        "bytes_total": int(agg["total"] or 0),
    }


async def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition: `Authorization: Bearer <MLXM_METRICS_TOKEN>` or an allowed address."""
    if not _may_scrape(request):
        response = HttpResponse("metrics need the metrics token (MLXM_METRICS_TOKEN)\n", status=401,
                                content_type="text/plain; charset=utf-8")  # fmt: skip
        response["WWW-Authenticate"] = "Bearer"
        return response
    rec.recorder.observe_pending()
    live = {
        "workers": await _worker_states(),
        "downloads": await sync_to_async(_downloads)(),
        "breakers": upstream.breaker_names(),
    }
    body = metrics.render(live, multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
