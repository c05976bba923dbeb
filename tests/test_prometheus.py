"""A real Prometheus (Debian's, started on 127.0.0.1 by scripts/with_team_services.sh) scrapes
two web processes on one database; their worker's figures come through the web processes'
/metrics. Traffic goes in, and the request counter, the TTFT histogram and the worker's memory
are read back with PromQL through Prometheus' HTTP API. Runs in `make test-team`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import _shared_dir, free_port, manage, stop_gateway
from tests.test_deployment import PASSWORD, REDIS_URL, needs_team_services, serve, team_database  # noqa: F401

PROMETHEUS_URL = os.environ.get("PROMETHEUS_URL", "")
pytestmark = [
    pytest.mark.team,
    pytest.mark.slow,
    needs_team_services,
    pytest.mark.skipif(not PROMETHEUS_URL, reason="needs the team services' Prometheus (make test-team)"),
]


def promql(query: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{PROMETHEUS_URL}/api/v1/query", params={"query": query}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]  # type: ignore[no-any-return]


def wait_for(query: str, check: Any, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = promql(query)
        if check(result):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{query}: {result}")


def test_prometheus_scrapes_two_web_processes_and_the_worker(
    demo_models: dict[str, Path],
    tmp_path: Path,
    team_database: str,  # noqa: F811
) -> None:
    token = os.environ["MLXM_METRICS_TOKEN"]
    env = {**os.environ, "MLXM_DATA_DIR": str(tmp_path), "DATABASE_URL": team_database, "REDIS_URL": REDIS_URL,
           "MLXM_LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # theirs: <their data dir>/prometheus
    manage("migrate", "--noinput", "-v0", env=env)
    manage("prepare_demo_models", "--data-dir", str(_shared_dir()), env=env)
    manage("create_admin", "--username", "admin", "--password-stdin", env=env, stdin=PASSWORD + "\n")
    key = manage("create_api_key", "--username", "admin", "--name", "prom", env=env).strip().splitlines()[-1]
    a = serve(env, free_port(), tmp_path / "a.log")
    b = serve(env, free_port(), tmp_path / "b.log", "--no-worker", "--no-downloads")
    targets = [a.url.removeprefix("http://"), b.url.removeprefix("http://")]
    try:
        a.wait_healthy()
        b.wait_healthy()
        Path(os.environ["MLXM_PROM_TOKEN_FILE"]).write_text(token)
        Path(os.environ["MLXM_PROM_TARGETS"]).write_text(json.dumps([{"targets": targets}]))
        for gw in (a, b):
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=60)
            for _ in range(3):
                client.chat.completions.create(model="tiny-random", max_tokens=4,
                                               messages=[{"role": "user", "content": "hi"}])  # fmt: skip
        # Both targets are up and each reports the six requests of both processes.
        wait_for('up{job="mlxm"} == 1', lambda r: len(r) == 2)
        query = 'sum by (instance) (mlxm_requests_total{endpoint="/v1/chat/completions",status="200"})'
        counts = wait_for(query, lambda r: len(r) == 2 and all(float(s["value"][1]) >= 6 for s in r))
        assert {s["metric"]["instance"] for s in counts} == set(targets)
        ttft = wait_for('sum(mlxm_time_to_first_token_seconds_count{endpoint="/v1/chat/completions"}) by (instance)',
                        lambda r: len(r) == 2 and all(float(s["value"][1]) >= 6 for s in r))  # fmt: skip
        assert ttft
        # The worker's own queue wait, from each local answer's final output.
        wait_for('sum(mlxm_queue_wait_seconds_count{backend="local:tiny-random"}) by (instance)',
                 lambda r: len(r) == 2 and all(float(s["value"][1]) >= 6 for s in r))  # fmt: skip
        p95 = promql(
            'histogram_quantile(0.95, sum by (le) (mlxm_time_to_first_token_seconds_bucket{endpoint="/v1/chat/completions"}))'
        )
        assert p95 and float(p95[0]["value"][1]) > 0
        memory = wait_for('mlxm_worker_memory_bytes{kind="weights",worker="embedded"}',
                          lambda r: len(r) == 2 and all(float(s["value"][1]) > 0 for s in r))  # fmt: skip
        assert memory
        wait_for('mlxm_model_loaded{model="tiny-random"}', lambda r: len(r) == 2)
    finally:
        Path(os.environ["MLXM_PROM_TARGETS"]).write_text("[]")
        for gw in (b, a):
            stop_gateway(gw)
