"""Reads for the home page: the dashboard's numbers, the processes' health, the first-run
checklist and a member's own usage.

Every database read is a bounded query: the last hour's requests (one grouped query on the
created_at index, at most 60 rows back, and one row for the TTFT percentile), today's top
users and models (the audit log's hourly rollups plus the partial hours at the edges, at most
three queries), at most a few running downloads, and one query for the whole checklist.
The workers' state comes from the workers themselves (never MLX in this process).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.db.models.functions import TruncMinute
from django.utils import timezone

from inference.client import EngineDeadError, EngineRequestError
from inference.consumers import ENDPOINT as PLAYGROUND_ENDPOINT
from inference.fleet import get_engine_client
from mlxmanager.accounts.models import ApiKey
from mlxmanager.audit.models import RequestLog
from mlxmanager.audit.selectors import RequestFilter, totals, totals_by_user
from mlxmanager.downloads.models import Download
from mlxmanager.downloads.selectors import download_service_alive
from mlxmanager.profiles.models import Profile
from mlxmanager.profiles.services import DEMO_PROFILES
from mlxmanager.workers.selectors import enabled_workers, worker_check

HEALTH_TIMEOUT_S = 2.0
WINDOW_MINUTES = 60
TOP = 5
STARTED_AT = time.time()  # about when this web process started (the module loads with the URLs)

_ERROR = Q(status__gte=400) | ~Q(error_type="")


# ---- traffic over the last hour ------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    since: datetime
    until: datetime
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_p95_ms: float | None = None
    decode_tokens_per_s: float | None = None  # the mean decode rate of one request
    per_minute: tuple[int, ...] = ()  # requests in each minute, oldest first

    @property
    def seconds(self) -> float:
        return max(1.0, (self.until - self.since).total_seconds())

    @property
    def requests_per_minute(self) -> float:
        return self.requests / (self.seconds / 60)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second over the window (all requests together)."""
        return self.completion_tokens / self.seconds

    @property
    def peak(self) -> int:
        return max(self.per_minute, default=0)

    @property
    def error_pct(self) -> float | None:
        return self.errors / self.requests * 100 if self.requests else None

    def bars(self, *, width: int = 300, height: int = 40) -> list[dict[str, float]]:
        """Geometry of the per-minute sparkline (the template draws it as SVG; no script)."""
        peak = max(self.per_minute, default=0) or 1
        slot = width / max(1, len(self.per_minute))
        out = []
        for i, n in enumerate(self.per_minute):
            h = round(n / peak * (height - 2), 1) if n else 0.0
            out.append({"x": round(i * slot, 2), "w": round(max(slot - 1, 0.5), 2), "y": round(height - h, 1), "h": h, "n": n})  # fmt: skip
        return out


def _minute(value: datetime) -> datetime:
    return value.replace(second=0, microsecond=0)


def traffic(*, now: datetime | None = None, minutes: int = WINDOW_MINUTES) -> Traffic:
    """Requests, errors, tokens and time to first token of the last `minutes` (the current
    minute included): two queries on the created_at index."""
    now = now or timezone.now()
    since = _minute(now) - timedelta(minutes=minutes - 1)
    window = RequestLog.objects.filter(created_at__gte=since, created_at__lte=now)
    rows = list(
        window.annotate(minute=TruncMinute("created_at"))
        .values("minute")
        .annotate(
            n=Count("id"), e=Count("id", filter=_ERROR), p=Sum("prompt_tokens"), c=Sum("completion_tokens"),
            timed=Count("ttft_ms"), rate_sum=Sum("tokens_per_s"), rated=Count("tokens_per_s"),
        )
        .order_by()
    )  # fmt: skip
    per_minute = [0] * minutes
    n = e = p = c = timed = rated = 0
    rate_sum = 0.0
    for r in rows:
        index = int((_minute(r["minute"]) - since).total_seconds() // 60)
        if 0 <= index < minutes:
            per_minute[index] += r["n"]
        n, e, timed, rated = n + r["n"], e + r["e"], timed + r["timed"], rated + r["rated"]
        p, c, rate_sum = p + (r["p"] or 0), c + (r["c"] or 0), rate_sum + (r["rate_sum"] or 0.0)
    p95 = None
    if timed:
        # Nearest rank: the smallest TTFT that at least 95% of the timed requests reach.
        rank = math.ceil(0.95 * timed)
        found = list(
            window.filter(ttft_ms__isnull=False)
            .order_by("ttft_ms")
            .values_list("ttft_ms", flat=True)[rank - 1 : rank]
        )
        p95 = found[0] if found else None
    return Traffic(
        since=since,
        until=now,
        requests=n,
        errors=e,
        prompt_tokens=p,
        completion_tokens=c,
        ttft_p95_ms=p95,
        decode_tokens_per_s=rate_sum / rated if rated else None,
        per_minute=tuple(per_minute),
    )


def start_of_today(now: datetime | None = None) -> datetime:
    local = timezone.localtime(now or timezone.now())
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Today:
    since: datetime
    models: list[dict[str, Any]]
    users: list[dict[str, Any]]


def today(*, now: datetime | None = None, limit: int = TOP) -> Today:
    """Today's busiest models and users (since local midnight): at most three queries."""
    since = start_of_today(now)
    models, users = totals(RequestFilter(since=since, until=now), limit=limit)
    return Today(since=since, models=models, users=users)


def running_downloads(*, limit: int = TOP) -> list[Download]:
    return list(Download.objects.filter(status__in=Download.ACTIVE).order_by("created_at", "id")[:limit])


def served_profiles() -> list[Profile]:
    return list(Profile.objects.filter(enabled=True).order_by("-is_default", "name"))


# ---- the processes: web, workers, downloader ------------------------------------------


@dataclass
class Process:
    name: str
    role: str  # "web", "worker", "downloader"
    up: bool
    detail: str = ""
    pid: int | None = None
    uptime_s: float | None = None
    active: int = 0
    queued: int = 0
    used_bytes: int = 0
    limit_bytes: int = 0

    @property
    def used_pct(self) -> float:
        return min(100.0, round(self.used_bytes / self.limit_bytes * 100, 1)) if self.limit_bytes else 0.0


@dataclass
class LoadedModel:
    name: str
    worker: str
    kind: str
    weight_bytes: int
    cache_bytes: int
    active: int
    queued: int
    tokens_per_s: float

    @property
    def memory_bytes(self) -> int:
        return self.weight_bytes + self.cache_bytes


@dataclass
class Fleet:
    processes: list[Process] = field(default_factory=list)
    models: list[LoadedModel] = field(default_factory=list)
    loading: list[str] = field(default_factory=list)

    @property
    def workers(self) -> list[Process]:
        return [p for p in self.processes if p.role == "worker"]

    @property
    def memory_bytes(self) -> int:
        return sum(m.memory_bytes for m in self.models)

    @property
    def all_up(self) -> bool:
        return all(p.up for p in self.processes)


def _models(worker: str, models: list[dict[str, Any]]) -> list[LoadedModel]:
    return [
        LoadedModel(
            name=str(m.get("name", "?")),
            worker=worker,
            kind=str(m.get("kind") or "llm"),
            weight_bytes=int(m.get("weight_bytes") or 0),
            cache_bytes=int(m.get("prompt_cache_bytes") or 0),
            active=int(m.get("active_requests") or 0),
            queued=int(m.get("queued_requests") or 0),
            tokens_per_s=float(m.get("tokens_per_s") or 0.0),
        )
        for m in models
    ]


async def _embedded_health() -> dict[str, Any]:
    try:
        health = await get_engine_client().health(timeout=HEALTH_TIMEOUT_S)
    except (EngineDeadError, EngineRequestError, TimeoutError, OSError) as exc:
        return {"up": False, "error": str(exc) or type(exc).__name__}
    return {"up": True, **health}


async def fleet(*, now: float | None = None) -> Fleet:
    """This web process, the embedded worker, each enabled remote worker and the downloader:
    up or down, with what each worker holds. One query (the registered workers); the
    workers are asked at once, each for at most HEALTH_TIMEOUT_S."""
    remote = await sync_to_async(enabled_workers)()
    embedded, *others = await asyncio.gather(
        _embedded_health(), *(asyncio.wait_for(worker_check(address), HEALTH_TIMEOUT_S + 1) for _, address in remote),
        return_exceptions=True,
    )  # fmt: skip
    now = now if now is not None else time.time()
    out = Fleet()
    out.processes.append(Process("Web server", "web", True, pid=os.getpid(), uptime_s=now - STARTED_AT))
    if isinstance(embedded, dict) and embedded.get("up"):
        memory = embedded.get("memory") or {}
        out.models += _models("embedded", embedded.get("models") or [])
        if embedded.get("loading"):
            out.loading.append(str(embedded["loading"]))
        out.processes.append(
            Process("Inference worker", "worker", True, "draining" if embedded.get("draining") else "",
                    pid=embedded.get("pid"), uptime_s=embedded.get("uptime_s"),
                    active=int(embedded.get("active_requests") or 0), queued=int(embedded.get("queue_depth") or 0),
                    used_bytes=int(memory.get("used_bytes") or 0), limit_bytes=int(memory.get("limit_bytes") or 0))
        )  # fmt: skip
    else:
        error = embedded.get("error", "") if isinstance(embedded, dict) else str(embedded)
        out.processes.append(Process("Inference worker", "worker", False, error or "not answering"))
    for (name, _address), health in zip(remote, others, strict=True):
        if isinstance(health, dict) and health.get("up"):
            memory = health.get("memory") or {}
            out.models += _models(name, health.get("loaded") or [])
            out.processes.append(
                Process(name, "worker", True, pid=health.get("pid"), active=int(health.get("active") or 0),
                        queued=int(health.get("queued") or 0), used_bytes=int(memory.get("used_bytes") or 0),
                        limit_bytes=int(memory.get("limit_bytes") or 0))
            )  # fmt: skip
        else:
            error = health.get("error", "") if isinstance(health, dict) else (str(health) or "timed out")
            out.processes.append(Process(name, "worker", False, error))
    alive = download_service_alive(now=now)
    out.processes.append(Process("Downloader", "downloader", alive, "" if alive else "no heartbeat"))
    out.models.sort(key=lambda m: (m.worker != "embedded", m.worker, m.name))
    return out


# ---- the first-run checklist ----------------------------------------------------------


@dataclass(frozen=True)
class Checklist:
    key: bool  # the user has an API key
    api_call: bool  # the user has made a /v1 request (any client)
    playground: bool  # the user has chatted in the playground
    invited: bool  # someone else has an account
    model: bool  # a download was started, or a profile of one's own exists

    @property
    def items(self) -> list[tuple[str, bool]]:
        return [
            ("key", self.key),
            ("snippet", self.api_call),
            ("playground", self.playground),
            ("invite", self.invited),
            ("model", self.model),
        ]

    @property
    def done(self) -> int:
        return sum(done for _, done in self.items)

    @property
    def complete(self) -> bool:
        return self.done == len(self.items)


def checklist(*, user: User) -> Checklist:
    """Each item from the real state, in one query (EXISTS subqueries on indexed columns)."""
    users = get_user_model().objects
    mine = RequestLog.objects.filter(user_id=OuterRef("pk"))
    row = (
        users.filter(pk=user.pk)
        .annotate(
            has_key=Exists(ApiKey.objects.filter(user=OuterRef("pk"))),
            api_call=Exists(mine.exclude(endpoint=PLAYGROUND_ENDPOINT)),
            playground=Exists(mine.filter(endpoint=PLAYGROUND_ENDPOINT)),
            invited=Exists(users.exclude(pk=OuterRef("pk"))),
            downloads=Exists(Download.objects.all()),
            own_profiles=Exists(Profile.objects.exclude(name__in=list(DEMO_PROFILES))),
        )
        .values("has_key", "api_call", "playground", "invited", "downloads", "own_profiles")
        .first()
    ) or {}
    return Checklist(
        key=bool(row.get("has_key")),
        api_call=bool(row.get("api_call")),
        playground=bool(row.get("playground")),
        invited=bool(row.get("invited")),
        model=bool(row.get("downloads") or row.get("own_profiles")),
    )


# ---- a member's own usage --------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage(*, user: User, since: datetime, now: datetime | None = None) -> Usage:
    """One user's requests and tokens since `since` (rollups plus edges: at most three queries)."""
    rows = totals_by_user(RequestFilter(since=since, until=now, user=user.get_username()), limit=1)
    if not rows:
        return Usage()
    r = rows[0]
    return Usage(r["requests"], r["errors"], r["prompt_tokens"], r["completion_tokens"])


def active_keys(*, user: User, now: datetime | None = None, limit: int = TOP) -> list[ApiKey]:
    now = now or timezone.now()
    return list(
        ApiKey.objects.filter(user=user, revoked_at__isnull=True)
        .exclude(expires_at__lte=now)
        .order_by("-created_at")[:limit]
    )
