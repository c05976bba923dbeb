"""Health endpoint: web and worker state, no auth, no secrets."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from inference.client import EngineDeadError
from inference.workers import get_engine_client


async def healthz(request: HttpRequest) -> JsonResponse:
    web = {"state": "up"}
    try:
        worker = await get_engine_client().health()
    except EngineDeadError as exc:
        return JsonResponse(
            {"status": "degraded", "web": web, "worker": {"state": "down", "detail": str(exc)}}, status=503
        )
    models = worker.get("models", [])
    hit = sum(m.get("cache_hit_tokens", 0) for m in models)
    seen = sum(m.get("prompt_tokens", 0) for m in models)
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
            "loaded_models": [
                {
                    k: m.get(k)
                    for k in (
                        "name",
                        "active_requests",
                        "weight_bytes",
                        "prompt_cache_bytes",
                        "tokens_generated",
                    )
                }
                for m in models
            ],
        },
    }
    return JsonResponse(body)
