"""The gateway's added latency per proxied request: the same call made directly to a fake
OpenAI-compatible upstream and through the gateway (a routing rule sends the model there).

The gateway is the real web process, started by `manage.py serve --no-worker --no-downloads`
(uvicorn, Django, ninja, API-key auth, routing, the audit middleware and its background
flush); no inference worker, as nothing is local. The fake upstream (tests/inference/fakes.py)
runs on 127.0.0.1 in this process. Bare ASGI apps (benchmarks/_asgi_floor.py) run in the same
invocation to show what the web server and the HTTP client cost by themselves: `hello` (a
fixed answer) and a proxy that forwards with one pooled client and relays, nothing else, under
the product's uvicorn command line with aiohttp (the floor of this gateway's stack), and, for
comparison, under daphne and with httpx (the stack this gateway ran on before). Each round
calls every path once, in turn, over one keep-alive `httpx.Client` per path, after a warm-up;
added latency is the median of per-round differences against the direct call of that round.

    python benchmarks/bench_proxy.py [--requests 1000] [--write docs/benchmarks.md]
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

from benchmarks._common import (  # noqa: E402
    ROOT,
    cpu_model,
    fmt_load,
    loadavg,
    md_table,
    median,
    percentile,
    stop_process_group,
    utc_now,
    version,
    write_section,
)

SECTION_TITLE = "## Gateway overhead per proxied request"
BODY = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}
TARGET_MS = 2.0
# Not measured by this script: timestamps and profiles taken inside one web process serving the
# same request in-process (no web server), 2026-11-23 on the machine above.
BREAKDOWN = (
    "What was taken off the path (each measured by this script's stack table or by an in-process probe of "
    "the same request, medians of 1,000 requests, same machine): the web server (daphne → uvicorn on uvloop + "
    "httptools, ~0.7 ms); the upstream client (httpx → aiohttp, whose HTTP parser is C, ~1.3 ms); the thread "
    "hops of Django's `request_started` and `request_finished` signals, whose synchronous receivers "
    "(`close_old_connections`, `reset_queries`) cost ~0.3-0.4 ms each (the `/v1` handler leaves the first out "
    "and closes the response on the event loop when the request ran nothing in its thread, "
    "`mlxmanager/gateway_asgi.py`). Earlier (session 2): 10 browser-middleware thread hops, an API-key query "
    "(with a new SQLite connection on a new thread per request) and two thread starts per request, 14 ms "
    "added at p50. What remains over the floor, ~0.45 ms in-process with warm caches: reading the body and "
    "building Django's request (~0.05 ms), the URL match (kept per path since), the audit middleware and ninja up to the API-key "
    "check (~0.06 ms), the key check (cached, ~0.035 ms), ninja's body parsing and validation (~0.06 ms), "
    "routing and building the upstream call (~0.02 ms), reading the upstream's answer and building the "
    "response (~0.08 ms). Served between other processes (as here) the same work takes about twice as long: "
    "its caches are cold. TCP_NODELAY is set by uvicorn, aiohttp and the fake upstream."
)
DAPHNE = [sys.executable, "-m", "daphne", "-b", "127.0.0.1"]
# (label, server, app) for the bare ASGI apps of the stack comparison (measured in a second
# phase, so they don't share the gateway's rounds: more processes between two gateway calls
# leave its caches colder).
STACKS = [
    ("uvicorn+aiohttp", "uvicorn", "proxy_aiohttp"),
    ("uvicorn+httpx", "uvicorn", "proxy_httpx"),
    ("daphne+aiohttp", "daphne", "proxy_aiohttp"),
    ("daphne+httpx", "daphne", "proxy_httpx"),
    ("uvicorn hello", "uvicorn", "hello"),
    ("daphne hello", "daphne", "hello"),
]


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def start_web(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
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
    proc = _spawn([sys.executable, "manage.py", "serve", "--no-worker", "--no-downloads"], env)
    url = f"http://127.0.0.1:{port}"
    _wait_up(url + "/login/")
    return proc, url, key


def start_floor(server: str, app: str, upstream: str, key: str) -> tuple[subprocess.Popen[bytes], str]:
    from mlxmanager import webserver
    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "BENCH_UPSTREAM": upstream, "BENCH_UPSTREAM_KEY": key}
    target = f"benchmarks._asgi_floor:{app}"
    if server == "uvicorn":  # the product's command line, with --lifespan off (bare apps have none)
        cmd = webserver.command(
            "127.0.0.1", port, forwarded_allow_ips="127.0.0.1", app=target, lifespan=False
        )
    else:
        cmd = [*DAPHNE, "-p", str(port), target]
    proc = _spawn(cmd, env)
    url = f"http://127.0.0.1:{port}"
    _wait_up(url + "/")
    return proc, url


def _client(base: str, bearer: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"authorization": f"Bearer {bearer}"}, timeout=30)


def _once(c: httpx.Client, model: str, stream: bool) -> float:
    body = {**BODY, "model": model, "stream": stream}
    t0 = time.perf_counter()
    if stream:
        with c.stream("POST", "/chat/completions", json=body) as r:
            for _ in r.iter_raw():
                pass
    else:
        r = c.post("/chat/completions", json=body)
    ms = (time.perf_counter() - t0) * 1000
    assert r.status_code == 200, r.status_code
    return ms


def _rounds(clients: dict[str, tuple[httpx.Client, str]], n: int, warmup: int) -> dict[str, list[float]]:
    """Each round calls every path once, JSON then SSE, in turn."""
    results: dict[str, list[float]] = {
        f"{p}{s}": [] for p in clients for s in ("", "_stream") if not (s and p.endswith("hello"))
    }
    for i in range(warmup + n):
        for suffix in ("", "_stream"):
            for name, (c, model) in clients.items():
                if name + suffix in results:
                    ms = _once(c, model, bool(suffix))
                    if i >= warmup:
                        results[name + suffix].append(ms)
    return results


def measure(n: int, warmup: int) -> dict[str, object]:
    from tests.gateway_fixtures import Admin
    from tests.inference.fakes import FakeUpstream

    fake = FakeUpstream()
    tmp = Path(tempfile.mkdtemp(prefix="mlxm-bench-proxy-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        web, url, key = start_web(tmp)
        procs.append(web)
        floor, floor_url = start_floor("uvicorn", "proxy_aiohttp", fake.openai_base, fake.key)
        procs.append(floor)

        class _Gw:  # what Admin needs of a Gateway
            def __init__(self, url: str) -> None:
                self.url = url

        admin = Admin(_Gw(url))  # type: ignore[arg-type]
        admin.credential(fake, "openai_compatible", name="fake")
        admin.rule("bench-model", {"credential": "fake", "model": "upstream-model"})
        direct = (_client(fake.openai_base, fake.key), "upstream-model")
        # Phase 1, the target: direct, the floor and the gateway in the same rounds.
        results = _rounds(
            {"direct": direct, "floor": (_client(floor_url + "/v1", fake.key), "upstream-model"),
             "gateway": (_client(url + "/v1", key), "bench-model")},
            n, warmup,
        )  # fmt: skip
        rows_written = len(admin.requests(model="bench-model", size=500))
        stop_process_group(web)
        # Phase 2, the stack comparison: bare apps under both servers, with both clients.
        stacks = {"direct": direct}
        for label, server, app in STACKS:
            proc, stack_url = start_floor(server, app, fake.openai_base, fake.key)
            procs.append(proc)
            stacks[label] = (_client(stack_url + "/v1", fake.key), "upstream-model")
        compared = _rounds(stacks, n, warmup)
        return {"results": results, "stacks": compared, "rows": rows_written}
    finally:
        for proc in procs:
            stop_process_group(proc)
        fake.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _paired(base: list[float], other: list[float]) -> float:
    return median([b - a for a, b in zip(base, other, strict=True)])


def report(data: dict[str, object], n: int, argv: Sequence[str], load: tuple[tuple[float, ...], ...]) -> str:
    res: dict[str, list[float]] = data["results"]  # type: ignore[assignment]
    cmp: dict[str, list[float]] = data["stacks"]  # type: ignore[assignment]
    table = []
    status = []
    for kind, s in {"JSON (non-streaming)": "", "SSE stream (to the last byte)": "_stream"}.items():
        d, p, g = res["direct" + s], res["floor" + s], res["gateway" + s]
        added, floor = _paired(d, g), _paired(d, p)
        table.append([kind, f"{percentile(d, 50):.2f}", f"{percentile(p, 50):.2f}", f"{percentile(g, 50):.2f}",
                      f"{percentile(g, 90):.2f}", f"{percentile(g, 99):.2f}", f"**{added:.2f}**",
                      f"{floor:.2f}", f"{_paired(p, g):.2f}"])  # fmt: skip
        met = "**met**" if added <= TARGET_MS else "not met"
        status.append([kind, f"≤ {TARGET_MS:g} ms", f"{added:.2f} ms", met, f"{floor:.2f} ms"])
    stacks = []
    for label, server, app in STACKS:
        what = "fixed answer, no upstream" if app == "hello" else f"proxy with {app.removeprefix('proxy_')}"
        row = [f"{server}: {what}" + (" (the floor's stack)" if label == "uvicorn+aiohttp" else "")]
        for s in ("", "_stream"):
            row.append(f"{_paired(cmp['direct' + s], cmp[label + s]):.2f}" if label + s in cmp else "")
        stacks.append(row)
    return "\n".join([
        f"Command: `.venv/bin/python benchmarks/bench_proxy.py {' '.join(argv)}`",
        "",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}; shared with other jobs",
        f"- Date: {utc_now()}; load average (1/5/15 min) before {fmt_load(load[0])}, after {fmt_load(load[1])}",
        f"- uvicorn {version('uvicorn')} (uvloop {version('uvloop')}, httptools {version('httptools')}), "
        f"aiohttp {version('aiohttp')}, Django {version('django')}, Python {platform.python_version()}; "
        f"for comparison daphne {version('daphne')}, httpx {version('httpx')}",
        f"- {n} rounds after a warm-up; each round calls every path once, in turn, over one keep-alive client per "
        "path; the fake upstream answers a 3-word chat completion (JSON, or 7 SSE events)",
        "- **direct**: the fake upstream itself. **floor**: a bare ASGI app under the product's uvicorn command "
        "line that forwards the body with one pooled `aiohttp.ClientSession` and relays the answer, nothing else "
        "(`benchmarks/_asgi_floor.py:proxy_aiohttp`). **gateway**: the real web process (`manage.py serve "
        "--no-worker`): uvicorn → the `/v1` handler (audit middleware only) → ninja → API-key auth (cached) → "
        "routing rule (cached) → pooled aiohttp call → relay; each request audited (buffered, flushed in the "
        "background)",
        "- Added = median over rounds of (path − direct in the same round)",
        "",
        md_table(["request", "direct p50 ms", "floor p50 ms", "gateway p50 ms", "gateway p90 ms",
                  "gateway p99 ms", "gateway added ms", "floor added ms", "gateway over the floor ms"], table),
        "",
        md_table(["target: gateway added latency", "goal", "measured", "status", "floor (uvicorn + aiohttp)"],
                 status),
        "",
        "Web server and HTTP client alone (bare ASGI apps; a second phase of as many rounds, after the gateway "
        "was stopped): added ms over the direct call, median of per-round differences",
        "",
        md_table(["stack", "JSON added ms", "SSE added ms"], stacks),
        "",
        f"Audit rows written for the gateway requests (first page of up to 500): {data['rows']}.",
        "",
        BREAKDOWN,
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--write", metavar="MARKDOWN", default=None)
    args_list = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(args_list)
    before = loadavg()
    data = measure(args.requests, args.warmup)
    body = report(data, args.requests, args_list, (before, loadavg()))
    print(body)
    if args.write:
        write_section(Path(args.write), SECTION_TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
