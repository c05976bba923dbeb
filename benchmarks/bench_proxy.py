"""The gateway's added latency per proxied request: the same call made directly to a fake
OpenAI-compatible upstream and through the gateway (a routing rule sends the model there).

The gateway is the real web process (daphne + Django + ninja, API-key auth, routing, audit
middleware and its background flush); no inference worker is started, as nothing is local.
The fake upstream (tests/inference/fakes.py) runs on 127.0.0.1 in this process. Requests
alternate direct / gateway, each over its own keep-alive `httpx.Client`, after a warm-up;
the report gives p50/p90/p99 of both, and the median of per-pair differences.

    python benchmarks/bench_proxy.py [--requests 400] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from benchmarks._common import (
    ROOT,
    cpu_model,
    md_table,
    median,
    percentile,
    stop_process_group,
    utc_now,
    write_section,
)  # noqa: E402

SECTION_TITLE = "## Gateway overhead per proxied request"
BODY = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}


def start_web(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, str, dict[str, str]]:
    from tests.conftest import free_port, manage

    port = free_port()
    env = {**os.environ, "MLXM_DATA_DIR": str(data_dir), "MLXM_PORT": str(port), "MLXM_LOG_LEVEL": "WARNING",
           "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}  # fmt: skip
    env.pop("DATABASE_URL", None)
    manage("migrate", "--noinput", "-v0", env=env)
    manage(
        "create_admin", "--username", "admin", "--password-stdin", env=env, stdin="correct-horse-battery\n"
    )
    key = manage("create_api_key", "--username", "admin", "--name", "bench", env=env).strip().splitlines()[-1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "mlxmanager.asgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/login/", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    return proc, url, key, env


def measure(n: int, warmup: int) -> dict[str, object]:
    from tests.gateway_fixtures import Admin
    from tests.inference.fakes import FakeUpstream

    fake = FakeUpstream()
    tmp = Path(tempfile.mkdtemp(prefix="mlxm-bench-proxy-"))
    proc, url, key, _ = start_web(tmp)
    try:

        class _Gw:  # what Admin needs of a Gateway
            def __init__(self, url: str) -> None:
                self.url = url

        admin = Admin(_Gw(url))  # type: ignore[arg-type]
        admin.credential(fake, "openai_compatible", name="fake")
        admin.rule("bench-model", {"credential": "fake", "model": "upstream-model"})
        direct = httpx.Client(
            base_url=fake.openai_base, headers={"authorization": f"Bearer {fake.key}"}, timeout=30
        )
        via = httpx.Client(base_url=url + "/v1", headers={"authorization": f"Bearer {key}"}, timeout=30)
        results: dict[str, list[float]] = {
            "direct": [],
            "gateway": [],
            "direct_stream": [],
            "floor": [],
            "gateway_stream": [],
        }

        def once(client: httpx.Client, model: str, stream: bool) -> float:
            body = {**BODY, "model": model, "stream": stream}
            t0 = time.perf_counter()
            if stream:
                with client.stream("POST", "/chat/completions", json=body) as r:
                    for _ in r.iter_raw():
                        pass
            else:
                r = client.post("/chat/completions", json=body)
            assert r.status_code == 200, r.status_code
            return (time.perf_counter() - t0) * 1000

        for i in range(warmup + n):
            for stream in (False, True):
                d = once(direct, "upstream-model", stream)
                g = once(via, "bench-model", stream)
                if i >= warmup:
                    results["direct_stream" if stream else "direct"].append(d)
                    if not stream:
                        t0 = time.perf_counter()
                        via.get("/unknown")  # the web stack's floor: auth-free JSON 404
                        results["floor"].append((time.perf_counter() - t0) * 1000)
                    results["gateway_stream" if stream else "gateway"].append(g)
        rows_written = len(admin.requests(model="bench-model", size=500))
        return {"results": results, "rows": rows_written}
    finally:
        stop_process_group(proc)
        fake.close()
        shutil.rmtree(tmp, ignore_errors=True)


def report(data: dict[str, object], n: int, argv: Sequence[str]) -> str:
    res: dict[str, list[float]] = data["results"]  # type: ignore[assignment]
    table = []
    for kind, (d_key, g_key) in {"JSON (non-streaming)": ("direct", "gateway"),
                                 "SSE stream (to the last byte)": ("direct_stream", "gateway_stream")}.items():  # fmt: skip
        d, g = res[d_key], res[g_key]
        added = median([b - a for a, b in zip(d, g, strict=True)])
        table.append([kind, f"{percentile(d, 50):.2f}", f"{percentile(g, 50):.2f}", f"{percentile(g, 90):.2f}",
                      f"{percentile(g, 99):.2f}", f"{percentile(g, 50) - percentile(d, 50):.2f}", f"{added:.2f}"])  # fmt: skip
    return "\n".join([
        f"Command: `.venv/bin/python benchmarks/bench_proxy.py {' '.join(argv)}`",
        "",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}",
        f"- Date: {utc_now()}",
        f"- {n} requests of each kind per path, alternating direct / gateway, after a warm-up; one keep-alive "
        "client per path; the fake upstream answers a 3-word chat completion",
        "- Gateway path: daphne → audit middleware → API-key auth (one indexed query) → routing rule (cached) → "
        "httpx to the upstream → relay; the request is audited (buffered, flushed in the background)",
        "",
        md_table(["request", "direct p50 ms", "gateway p50 ms", "gateway p90 ms", "gateway p99 ms",
                  "added p50 ms", "added (median of pairs) ms"], table),  # fmt: skip
        "",
        f"The web stack's own floor on this machine (daphne + Django middleware + a JSON 404 from the `/v1` "
        f"catch-all, no auth, no upstream): p50 {percentile(res['floor'], 50):.2f} ms. The gateway's share of the "
        "added latency is the rest: API-key lookup (an async ORM query), route lookup, the async httpx call and "
        "the relay.",
        "",
        f"Audit rows written for the gateway requests (first page of up to 500): {data['rows']}.",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--write", metavar="MARKDOWN", default=None)
    args_list = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(args_list)
    body = report(measure(args.requests, args.warmup), args.requests, args_list)
    print(body)
    if args.write:
        write_section(Path(args.write), SECTION_TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
