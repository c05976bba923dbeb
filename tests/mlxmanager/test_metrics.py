"""/metrics: who may scrape, request figures observed when a request's audit ends, live figures
(worker, downloads, breakers) at scrape time."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import AsyncClient, Client

from mlxmanager import metrics
from mlxmanager.audit import recorder as rec

pytestmark = pytest.mark.django_db
TOKEN = "metrics-test-token-0123456789"


def _value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _scrape(client: Client) -> str:
    r = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert r.status_code == 200, r.content[:300]
    assert r["Content-Type"].startswith("text/plain")
    return r.content.decode()


@pytest.fixture
def token(settings: Any) -> str:
    settings.MLXM_METRICS_TOKEN = TOKEN
    settings.MLXM_METRICS_ALLOW_IPS = ()
    settings.MLXM_WORKER_SOCKET = "/nonexistent/worker.sock"  # the worker is down here
    return TOKEN


def test_never_anonymous_by_default(client: Client, token: str) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200


def test_an_allowed_address_may_scrape(client: Client, settings: Any) -> None:
    settings.MLXM_METRICS_TOKEN = ""
    settings.MLXM_METRICS_ALLOW_IPS = ("127.0.0.1",)
    settings.MLXM_WORKER_SOCKET = "/nonexistent/worker.sock"
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.9").status_code == 401


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_v1_request_is_counted_and_a_down_worker_shows(async_client: AsyncClient, token: str) -> None:
    async def scrape() -> str:
        r = await async_client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        return r.content.decode()

    before = _value(await scrape(), "mlxm_requests_total", endpoint="/v1/models", status="401")
    assert (await async_client.get("/v1/models")).status_code == 401  # no key: refused, and counted
    text = await scrape()
    assert _value(text, "mlxm_requests_total", endpoint="/v1/models", status="401") == before + 1
    assert re.search(r'^mlxm_worker_up\{worker="embedded"\} 0\.0$', text, re.M)
    assert "mlxm_downloads_active 0.0" in text


def test_observe_keeps_labels_bounded_and_counts_tokens() -> None:
    served = rec.RequestAudit(endpoint="/v1/chat/completions", requested_model="tiny", backend="local:tiny",
                              upstream_model="tiny", status=200, prompt_tokens=30, cached_tokens=20,
                              completion_tokens=5)  # fmt: skip
    served.first_output()
    served.queue_wait_s = 0.25
    refused = rec.RequestAudit(
        endpoint="/v1/chat/completions", requested_model="made-up-" + "x" * 50, status=404
    )
    before = metrics.TOKENS.labels("cached", "tiny", "local:tiny")._value.get()
    waits = metrics.QUEUE_WAIT.labels("local:tiny")._sum.get()
    metrics.observe(served)
    metrics.observe(refused)
    assert metrics.TOKENS.labels("cached", "tiny", "local:tiny")._value.get() == before + 20
    assert metrics.QUEUE_WAIT.labels("local:tiny")._sum.get() == waits + 0.25
    # A refused request's model is not a label value: no series per made-up name.
    assert metrics.REQUESTS.labels("/v1/chat/completions", "", "", "404")._value.get() >= 1


def test_live_figures_of_a_worker() -> None:
    state = {"queue_depth": 2, "active_requests": 3,
             "memory": {"limit_bytes": 1000, "rss_bytes": 700, "mlx_peak_bytes": 650},
             "models": [{"name": "tiny", "kind": "llm", "active_requests": 3, "queued_requests": 2,
                         "weight_bytes": 400, "kv_bytes": 150, "prompt_cache_bytes": 100,
                         "prompt_cache_entries": 4, "cache_hit_tokens": 50, "prompt_tokens": 80,
                         "disk_cache_bytes": 3000, "disk_cache_entries": 2}]}  # fmt: skip
    text = metrics.render({"workers": [{"name": "embedded", "state": state}], "breakers": {"cloud-a": "open"}},
                          multiprocess_dir=None).decode()  # fmt: skip
    assert _value(text, "mlxm_worker_memory_bytes", kind="kv") == 150
    assert _value(text, "mlxm_worker_memory_bytes", kind="free") == 350  # limit - weights - KV - cache
    assert _value(text, "mlxm_worker_memory_bytes", kind="resident") == 700
    assert _value(text, "mlxm_worker_memory_bytes", kind="mlx_peak") == 650
    assert _value(text, "mlxm_model_batch_size", model="tiny") == 3
    assert _value(text, "mlxm_prompt_cache_bytes", model="tiny", tier="memory") == 100
    assert _value(text, "mlxm_prompt_cache_bytes", model="tiny", tier="disk") == 3000
    assert _value(text, "mlxm_prompt_cache_entries", model="tiny", tier="disk") == 2
    assert _value(text, "mlxm_prompt_cache_hit_tokens_total", model="tiny") == 50
    assert _value(text, "mlxm_upstream_circuit_open", upstream="cloud-a") == 1


def test_a_batch_is_counted_as_its_requests() -> None:
    """The flusher counts a batch at once: counters summed per label set, one histogram
    observation per request."""

    def audit(status: int, completion: int) -> rec.RequestAudit:
        return rec.RequestAudit(endpoint="/v1/messages", requested_model="batch-m", backend="local:batch-m",
                                upstream_model="batch-m", status=status, prompt_tokens=10,
                                completion_tokens=completion)  # fmt: skip

    ok = metrics.REQUESTS.labels("/v1/messages", "batch-m", "local:batch-m", "200")._value.get()
    bad = metrics.REQUESTS.labels("/v1/messages", "", "local:batch-m", "500")._value.get()
    out = metrics.TOKENS.labels("output", "batch-m", "local:batch-m")._value.get()
    durations = sum(b.get() for b in metrics.DURATION.labels("/v1/messages", "local:batch-m")._buckets)
    metrics.observe_batch([audit(200, 3), audit(200, 4), audit(500, 0)])
    assert metrics.REQUESTS.labels("/v1/messages", "batch-m", "local:batch-m", "200")._value.get() == ok + 2
    assert metrics.REQUESTS.labels("/v1/messages", "", "local:batch-m", "500")._value.get() == bad + 1
    assert metrics.TOKENS.labels("output", "batch-m", "local:batch-m")._value.get() == out + 7
    assert (
        sum(b.get() for b in metrics.DURATION.labels("/v1/messages", "local:batch-m")._buckets)
        == durations + 3
    )
