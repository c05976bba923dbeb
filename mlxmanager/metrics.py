"""Prometheus metrics at `/metrics` (prometheus_client, multiprocess mode).

Every web process writes its counters and histograms to `PROMETHEUS_MULTIPROC_DIR` (settings
points it at `<data dir>/prometheus/`; `manage.py serve` empties it when it starts the embedded
worker), so a scrape of any web process reports one set for all of them. Request figures are
observed in one place, from the audit records of finished requests (every `/v1` request and
every playground generation ends there), by the recorder's flusher thread, off the request
path; a scrape first counts its own process's records still waiting for the flusher. Live figures (each worker's queue,
batch, memory and prompt cache; loaded models; downloads; upstream circuit breakers) are read
at scrape time: the worker's over the existing protocol (`Health`), no second server.

Label values are bounded: `model` is the profile or upstream model that served a request (or
empty for refusals), never a string a client made up.
"""

from __future__ import annotations

from collections import Counter as Counter_
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

PREFIX = "mlxm"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_GAP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

REQUESTS = Counter(
    f"{PREFIX}_requests", "Requests answered, by endpoint, model, backend and HTTP status.",
    ["endpoint", "model", "backend", "status"],
)  # fmt: skip
DURATION = Histogram(
    f"{PREFIX}_request_duration_seconds", "Whole request time (to the last byte of a stream).",
    ["endpoint", "backend"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
TTFT = Histogram(
    f"{PREFIX}_time_to_first_token_seconds", "Time to the first token (or first answer byte).",
    ["endpoint", "backend"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
GAP = Histogram(
    f"{PREFIX}_inter_token_seconds", "Mean gap between tokens after the first, one observation per request.",
    ["backend"], buckets=_GAP_BUCKETS,
)  # fmt: skip
QUEUE_WAIT = Histogram(
    f"{PREFIX}_queue_wait_seconds", "Time a local request waited in the worker before its prefill began.",
    ["backend"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
TOKENS = Counter(
    f"{PREFIX}_tokens", "Tokens by kind: input (prompt, cached included), cached, output.",
    ["kind", "model", "backend"],
)  # fmt: skip
UPSTREAM_ERRORS = Counter(
    f"{PREFIX}_upstream_errors",
    "Failed calls to cloud upstreams, by credential and kind.",
    ["upstream", "kind"],
)


def observe(audit: Any) -> None:
    """One finished request (a `RequestAudit`)."""
    observe_batch([audit])


def observe_batch(audits: Iterable[Any]) -> None:
    """Finished requests (`RequestAudit`s), counted together: counters are summed per label set
    first (in multiprocess mode each `inc` is a write to a memory-mapped file), histograms get
    one observation per request."""
    requests: Counter_[tuple[str, ...]] = Counter_()
    tokens: Counter_[tuple[str, ...]] = Counter_()
    for audit in audits:
        served = audit.status < 400 and bool(audit.backend)
        model = (audit.upstream_model or "")[:128] if served else ""
        backend = (audit.backend or "")[:120]
        endpoint = audit.endpoint[:64]
        requests[(endpoint, model, backend, str(audit.status))] += 1
        DURATION.labels(endpoint, backend).observe(audit.duration_ms / 1000)
        if audit.ttft_ms is not None and served:
            TTFT.labels(endpoint, backend).observe(max(audit.ttft_ms, 0.0) / 1000)
        if audit.queue_wait_s is not None:
            QUEUE_WAIT.labels(backend).observe(max(audit.queue_wait_s, 0.0))
        rate = audit.tokens_per_s
        if rate:
            GAP.labels(backend).observe(1.0 / rate)
        if served:
            for kind, value in (("input", audit.prompt_tokens), ("cached", audit.cached_tokens),
                                ("output", audit.completion_tokens)):  # fmt: skip
                if value > 0:
                    tokens[(kind, model, backend)] += value
    for labels, n in requests.items():
        REQUESTS.labels(*labels).inc(n)
    for labels, n in tokens.items():
        TOKENS.labels(*labels).inc(n)


def upstream_failed(upstream: str, kind: str) -> None:
    UPSTREAM_ERRORS.labels(upstream[:100], kind).inc()


class LiveCollector(Collector):
    """Figures read at scrape time (gathered by the view before the registry is rendered)."""

    def __init__(self, live: dict[str, Any]) -> None:
        self.live = live

    def collect(self) -> Iterator[Metric]:
        workers: list[dict[str, Any]] = self.live.get("workers", [])
        up = GaugeMetricFamily(
            f"{PREFIX}_worker_up", "1 when the worker answers its health check.", labels=["worker"]
        )
        queue = GaugeMetricFamily(
            f"{PREFIX}_worker_queue_depth", "Requests waiting in the worker.", labels=["worker"]
        )
        active = GaugeMetricFamily(
            f"{PREFIX}_worker_active_requests", "Requests being generated (the batch).", labels=["worker"]
        )
        memory = GaugeMetricFamily(
            f"{PREFIX}_worker_memory_bytes",
            "Worker memory: weights, prompt_cache, limit, free (limit - weights - cache), resident.",
            labels=["worker", "kind"],
        )
        loaded = GaugeMetricFamily(
            f"{PREFIX}_model_loaded", "Loaded models.", labels=["worker", "model", "kind"]
        )
        batch = GaugeMetricFamily(
            f"{PREFIX}_model_batch_size", "Requests in a model's batch.", labels=["worker", "model"]
        )
        queued = GaugeMetricFamily(
            f"{PREFIX}_model_queued_requests", "Requests waiting for a model.", labels=["worker", "model"]
        )
        weights = GaugeMetricFamily(
            f"{PREFIX}_model_weight_bytes", "A model's weights.", labels=["worker", "model"]
        )
        cache_bytes = GaugeMetricFamily(
            f"{PREFIX}_prompt_cache_bytes", "Prompt cache size by tier.", labels=["worker", "model", "tier"]
        )
        cache_entries = GaugeMetricFamily(
            f"{PREFIX}_prompt_cache_entries",
            "Prompt cache entries by tier.",
            labels=["worker", "model", "tier"],
        )
        hit_tokens = CounterMetricFamily(
            f"{PREFIX}_prompt_cache_hit_tokens",
            "Prompt tokens served from the prompt cache.",
            labels=["worker", "model"],
        )
        prompt_tokens = CounterMetricFamily(
            f"{PREFIX}_model_prompt_tokens", "Prompt tokens a model was given.", labels=["worker", "model"]
        )
        for w in workers:
            name = w["name"]
            state = w.get("state")
            up.add_metric([name], 1.0 if state else 0.0)
            if not state:
                continue
            queue.add_metric([name], float(state.get("queue_depth", 0)))
            active.add_metric([name], float(state.get("active_requests", 0)))
            models = state.get("models", [])
            mem = state.get("memory", {})
            weight_total = float(sum(m.get("weight_bytes", 0) for m in models))
            cache_total = float(sum(m.get("prompt_cache_bytes", 0) for m in models))
            kv_total = float(sum(m.get("kv_bytes", 0) for m in models))
            limit = float(mem.get("limit_bytes") or 0)
            memory.add_metric([name, "weights"], weight_total)
            memory.add_metric([name, "kv"], kv_total)
            memory.add_metric([name, "prompt_cache"], cache_total)
            if limit:
                memory.add_metric([name, "limit"], limit)
                memory.add_metric([name, "free"], max(limit - weight_total - kv_total - cache_total, 0.0))
            if mem.get("rss_bytes"):
                memory.add_metric([name, "resident"], float(mem["rss_bytes"]))
            if mem.get("mlx_peak_bytes"):
                memory.add_metric([name, "mlx_peak"], float(mem["mlx_peak_bytes"]))
            for m in models:
                model = str(m.get("name", ""))
                loaded.add_metric([name, model, str(m.get("kind", ""))], 1.0)
                batch.add_metric([name, model], float(m.get("active_requests", 0)))
                queued.add_metric([name, model], float(m.get("queued_requests", 0)))
                weights.add_metric([name, model], float(m.get("weight_bytes", 0)))
                cache_bytes.add_metric([name, model, "memory"], float(m.get("prompt_cache_bytes", 0)))
                cache_entries.add_metric([name, model, "memory"], float(m.get("prompt_cache_entries", 0)))
                cache_bytes.add_metric([name, model, "disk"], float(m.get("disk_cache_bytes", 0)))
                cache_entries.add_metric([name, model, "disk"], float(m.get("disk_cache_entries", 0)))
                hit_tokens.add_metric([name, model], float(m.get("cache_hit_tokens", 0)))
                prompt_tokens.add_metric([name, model], float(m.get("prompt_tokens", 0)))
        yield from (up, queue, active, memory, loaded, batch, queued, weights, cache_bytes, cache_entries,
                    hit_tokens, prompt_tokens)  # fmt: skip
        downloads = self.live.get("downloads", {})
        running = GaugeMetricFamily(f"{PREFIX}_downloads_active", "Downloads queued or running.")
        running.add_metric([], float(downloads.get("active", 0)))
        done = GaugeMetricFamily(
            f"{PREFIX}_download_bytes", "Bytes of active downloads: done and total.", labels=["kind"]
        )
        done.add_metric(["done"], float(downloads.get("bytes_done", 0)))
        done.add_metric(["total"], float(downloads.get("bytes_total", 0)))
        yield from (running, done)
        breaker = GaugeMetricFamily(
            f"{PREFIX}_upstream_circuit_open",
            "Circuit-breaker state per upstream credential in this process: 0 closed, 0.5 half-open, 1 open.",
            labels=["upstream"],
        )
        for upstream, state in self.live.get("breakers", {}).items():
            breaker.add_metric([str(upstream)], {"closed": 0.0, "half-open": 0.5}.get(state, 1.0))
        yield breaker


def render(live: dict[str, Any], *, multiprocess_dir: str | None) -> bytes:
    """The exposition text: every process's counters (multiprocess mode) and the live figures."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
        counters = generate_latest(registry)
    else:  # one process (no directory): its own registry
        counters = generate_latest(REGISTRY)
    current = CollectorRegistry()
    current.register(LiveCollector(live))
    return counters + generate_latest(current)
