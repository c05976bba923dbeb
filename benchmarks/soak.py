"""Soak test: many concurrent streaming clients against the live gateway for minutes.

The real product (`manage.py serve`: uvicorn + inference worker + downloader) serves the
tiny demo model on 127.0.0.1. `--clients` clients stream answers in a loop until the time is
up, half with the OpenAI chat shape and half with the Anthropic Messages shape, each request
with its own prompt (so the prompt cache fills and evicts as in real use). Every request
must end properly (HTTP 200, a finish reason, the stream's last event); the web and worker
processes' resident memory is sampled all along. "Flat memory" compares the median of the
last quarter of the run with the median of its second quarter (after warm-up and after the
prompt cache has filled), per process: the baseline of the ratio is the same run.

Exits 1 when a request failed or memory grew more than --max-growth.

    python benchmarks/soak.py [--clients 32] [--minutes 10] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from benchmarks._common import (  # noqa: E402
    ROOT,
    command_line,
    cpu_model,
    fmt_load,
    loadavg,
    md_table,
    median,
    percentile,
    prepare_models,
    start_gateway_env,
    utc_now,
    version,
    write_section,
)

SECTION_TITLE = "## Soak: concurrent streaming clients"
MODEL = "tiny-random"
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.failed += 1
        if len(self.errors) < 20:
            self.errors.append(why)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (serve's children run in their own sessions)."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == pid:
                out.append(int(status.parent.name))
                break
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def one_openai(http: httpx.AsyncClient, key: str, prompt: str, max_tokens: int, tally: Tally) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = None
    finish = None
    done = False
    tokens = 0
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        if r.status_code != 200:
            tally.fail(f"openai HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                tally.fail(f"openai stream error: {event['error']}")
                return
            for choice in event.get("choices") or []:
                if choice.get("delta", {}).get("content"):
                    first = first or time.perf_counter()
                finish = choice.get("finish_reason") or finish
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    if not done or finish is None:
        tally.fail(f"openai stream ended early (done={done}, finish={finish})")
        return
    tally.ok += 1
    tally.tokens += tokens
    if first is not None:
        tally.ttft.append(first - t0)


async def one_anthropic(
    http: httpx.AsyncClient, key: str, prompt: str, max_tokens: int, tally: Tally
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    t0 = time.perf_counter()
    first = None
    stop = None
    stopped = False
    tokens = 0
    async with http.stream("POST", "/v1/messages", json=body, headers=headers) as r:
        if r.status_code != 200:
            tally.fail(f"anthropic HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            kind = event.get("type")
            if kind == "error":
                tally.fail(f"anthropic stream error: {event.get('error')}")
                return
            if kind == "content_block_delta":
                first = first or time.perf_counter()
            elif kind == "message_delta":
                stop = event.get("delta", {}).get("stop_reason")
                tokens = event.get("usage", {}).get("output_tokens", 0)
            elif kind == "message_stop":
                stopped = True
    if not stopped or stop is None:
        tally.fail(f"anthropic stream ended early (stop_reason={stop}, message_stop={stopped})")
        return
    tally.ok += 1
    tally.tokens += tokens
    if first is not None:
        tally.ttft.append(first - t0)


async def client_loop(n: int, base: str, key: str, deadline: float, max_tokens: int, tally: Tally) -> None:
    rng = random.Random(n)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(120, connect=10)) as http:
        i = 0
        while time.monotonic() < deadline:
            prompt = f"client {n} turn {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
            call = one_openai if n % 2 == 0 else one_anthropic
            try:
                await call(http, key, prompt, max_tokens, tally)
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                tally.fail(f"{type(exc).__name__}: {exc}")
            i += 1


async def sample_memory(
    pids: dict[str, int], deadline: float, every: float, samples: dict[str, list[tuple[float, int]]]
) -> None:
    start = time.monotonic()
    while True:
        now = time.monotonic()
        for name, pid in pids.items():
            kib = rss_kib(pid)
            if kib is not None:
                samples.setdefault(name, []).append((now - start, kib))
        if now >= deadline:
            return
        await asyncio.sleep(min(every, max(0.0, deadline - now)))


def growth(series: list[tuple[float, int]], seconds: float) -> tuple[float, float, float]:
    """(median MiB of the second quarter, of the last quarter, their ratio)."""
    q2 = [kib for t, kib in series if seconds * 0.25 <= t < seconds * 0.5]
    q4 = [kib for t, kib in series if t >= seconds * 0.75]
    if not q2 or not q4:
        return (float("nan"), float("nan"), float("nan"))
    a, b = median(q2) / 1024, median(q4) / 1024
    return a, b, b / a


async def soak(base: str, key: str, pids: dict[str, int], args: argparse.Namespace) -> dict:
    seconds = args.minutes * 60
    deadline = time.monotonic() + seconds
    tally = Tally()
    samples: dict[str, list[tuple[float, int]]] = {}
    sampler = asyncio.create_task(sample_memory(pids, deadline, args.sample_every, samples))
    t0 = time.monotonic()
    await asyncio.gather(
        *(client_loop(n, base, key, deadline, args.max_tokens, tally) for n in range(args.clients))
    )
    wall = time.monotonic() - t0
    await sampler
    return {"tally": tally, "samples": samples, "wall": wall, "seconds": seconds}


def report(result: dict, args: argparse.Namespace, argv: list[str], load_before: tuple) -> tuple[str, bool]:
    tally: Tally = result["tally"]
    wall, seconds = result["wall"], result["seconds"]
    mem_rows = []
    flat = True
    for name, series in sorted(result["samples"].items()):
        a, b, ratio = growth(series, seconds)
        peak = max(kib for _, kib in series) / 1024
        ok = ratio == ratio and ratio <= 1 + args.max_growth
        flat = flat and ok
        mem_rows.append(
            [name, f"{a:.0f}", f"{b:.0f}", f"{peak:.0f}", f"{ratio:.3f}×", "flat" if ok else "GROWING"]
        )
    passed = tally.failed == 0 and flat and tally.ok > 0
    lines = [
        f"Command: `{command_line(__file__, argv)}` — {utc_now()}.",
        f"Machine: {cpu_model()}, {platform.system()} {platform.machine()}, {__import__('os').cpu_count()} cores; "
        f"mlx {version('mlx')}, mlx-lm {version('mlx-lm')}; load before {fmt_load(load_before)}, "
        f"after {fmt_load(loadavg())}.",
        "",
        f"{args.clients} clients on 127.0.0.1 streaming `{MODEL}` answers of up to {args.max_tokens} tokens "
        f"for {wall / 60:.1f} minutes, half through `/v1/chat/completions`, half through `/v1/messages`, "
        "every prompt different. Result: " + ("**passed**" if passed else "**FAILED**") + ".",
        "",
        md_table(
            ["requests ok", "failed", "tokens", "aggregate tok/s", "requests/s", "TTFT p50", "TTFT p95"],
            [
                [
                    str(tally.ok),
                    str(tally.failed),
                    str(tally.tokens),
                    f"{tally.tokens / wall:.0f}",
                    f"{tally.ok / wall:.1f}",
                    f"{percentile(tally.ttft, 50):.2f} s" if tally.ttft else "—",
                    f"{percentile(tally.ttft, 95):.2f} s" if tally.ttft else "—",
                ]
            ],
        ),
        "",
        "Resident memory (MiB), sampled every "
        f"{args.sample_every:.0f} s; the ratio is the last quarter's median over the second quarter's "
        f"(flat: at most {1 + args.max_growth:.2f}×):",
        "",
        md_table(["process", "2nd quarter", "last quarter", "peak", "ratio", "verdict"], mem_rows),
    ]
    if tally.errors:
        lines += ["", "First errors:", "", *[f"- `{e}`" for e in tally.errors]]
    return "\n".join(lines) + "\n", passed


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--max-growth", type=float, default=0.10, help="allowed memory growth (0.10: 10%%)")
    parser.add_argument("--write", type=Path, help="rewrite this section of the Markdown file")
    args = parser.parse_args(argv)

    load_before = loadavg()
    work = Path(tempfile.mkdtemp(prefix="mlxm-soak-"))
    models = prepare_models(ROOT / ".data" / "bench" / "shared")
    gw = start_gateway_env(work / "gw", models, {"MLXM_LOG_LEVEL": "WARNING"})
    try:
        web = [p for p in children(gw.proc.pid) if "uvicorn" in cmdline(p)]
        pids = {"worker": gw.worker_pid(), **({"web": web[0]} if web else {})}
        # Warm the model so the first quarter is not a load.
        httpx.post(
            f"{gw.v1}/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            headers={"Authorization": f"Bearer {gw.key}"},
            timeout=120,
        ).raise_for_status()
        result = asyncio.run(soak(gw.url, gw.key, pids, args))
        restarted = gw.worker_pid() != pids["worker"]
    finally:
        from tests.conftest import stop_gateway

        stop_gateway(gw)
    text, passed = report(result, args, argv, load_before)
    if restarted:
        text += "\nThe worker restarted during the run.\n"
        passed = False
    print(text)
    if args.write:
        write_section(args.write, SECTION_TITLE, text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
