from __future__ import annotations

from typing import Any

from django.conf import settings

from inference.client import EngineClient, EngineDeadError, EngineRequestError
from mlxmanager.workers.models import Worker


def enabled_workers() -> list[tuple[str, str]]:
    """(name, address) of the remote workers requests may go to."""
    return list(Worker.objects.filter(enabled=True).values_list("name", "address"))


def all_workers() -> list[Worker]:
    return list(Worker.objects.all())


async def worker_check(address: str) -> dict[str, Any]:
    """One short-lived connection: what the worker at `address` holds and how busy it is."""
    remote = address.startswith(("tcp://", "tls://"))
    client = EngineClient(
        address,
        connect_timeout=settings.MLXM_WORKER_CONNECT_TIMEOUT,
        secret=settings.MLXM_WORKER_SECRET if remote else None,
        tls_ca=settings.MLXM_WORKER_TLS_CA,
    )
    try:
        health = await client.health(timeout=3)
    except (EngineDeadError, EngineRequestError) as exc:
        return {"up": False, "error": str(exc)}
    finally:
        await client.aclose()
    return {
        "up": True,
        "pid": health.get("pid"),
        "active": health.get("active_requests", 0),
        "queued": health.get("queue_depth", 0),
        "models": [m.get("name", "") for m in health.get("models", [])],
        "loaded": health.get("models", []),
        "memory": health.get("memory", {}),
    }
