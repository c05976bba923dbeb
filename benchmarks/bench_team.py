"""Team-scale benchmark (issue 22, item 6): the gateway against mlx_lm.server, in one invocation.

Subject: SmolLM2-135M-Instruct as float32 (the q4 demo model converted once with
`mlx_lm convert --dequantize`, as `bench_engine.py` does; registered in the gateway as the
profile `smollm2-135m-f32`), or `--model tiny-random` (an 8k-context copy of the tiny demo
model: the smoke test's subject). Nothing is downloaded.

Servers, both on the same model directory, the same mlx and the same BLAS
(`inference.worker.blas.preload_blas()` runs before MLX in both):
- gateway: the real product, `manage.py serve` (web server + inference worker under its
  supervisor) via `tests.conftest.start_gateway`, with eight member users and a key each
  (6 agents, 2 chat users), created through the product's own services;
- mlx_lm.server, a fresh one per scenario, with `--decode-concurrency 32
  --prompt-concurrency 8` (the worker's BatchGenerator) and the same prompt-cache byte
  budget as the gateway (`--prompt-cache-bytes` = `MLXM_PROMPT_CACHE_BYTES`).

Scenarios (each against both servers, alternating which goes first per run):
 (f) agents: 6 agent users, each with its own ~3k-token system prompt (rules and a JSON
     tool list), 5 turns each (~100 new tokens a turn: a ~70-token user message plus the
     previous answer), and 2 chat users with short prompts, all at once. The prompt-cache
     budget holds about half of the agents' final prefixes. Total time, the agents'
     follow-up TTFT p50/p95, the share of their follow-up prompt tokens served from cache
     (memory and disk apart where the gateway's /healthz reports disk hits), chat TTFT p95.
 (g) flood: one user keeps 8 requests with ~2k-token prompts in flight (a 429 is waited
     out for its Retry-After, capped); a second user sends a short request every 2 s. Its
     TTFT p95 under the flood over its TTFT alone (median of the same probes, idle server).
 (h) restart: a 1.5k-token prefix is prefilled cold (turn 1), the serving process is killed
     with SIGKILL (the gateway's worker: `serve` restarts it; mlx_lm.server: this script
     starts a new one), a short unrelated request loads the model again, then the follow-up
     turn: its TTFT over the cold turn's.
 (i) memory: a gateway with `MLXM_MEMORY_LIMIT` = weights + 300 MB, and requests at once
     whose KV caches would need twice the 300 MB; the worker's peak resident memory
     (VmHWM, and VmRSS sampled every 50 ms) against the limit, whether it survived, and
     how every request ended. mlx_lm.server gets the same load (it has no limit).

    python benchmarks/bench_team.py [--runs 1] [--quick] [--model smollm2-135m-f32|tiny-random]
        [--scenarios f,g,h,i] [--gateway-env KEY=VALUE ...] [--write docs/benchmarks.md] [--json FILE]

`--quick` shrinks every size for a smoke run (tests/benchmarks/test_bench_team.py). No
timing is asserted anywhere: these are measurements. Every server is stopped at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    ROOT,
    StreamResult,
    command_line,
    cpu_model,
    default_openblas_threads,
    ensure_context_copy,
    ensure_dequantized,
    fmt,
    fmt_load,
    loadavg,
    md_table,
    median,
    paired_ratio,
    percentile,
    prepare_models,
    register_profile,
    safe_ratio,
    start_gateway_env,
    start_mlx_server,
    stream_chat,
    text_tokens,
    utc_now,
    version,
    write_section,
)
from benchmarks.bench_engine import MLX_SERVER_ARGS, code_version, filler_text  # noqa: E402

SECTION_TITLE = "## Team scale: agents, flood, restart, memory (gateway vs mlx_lm.server)"
GW, MLX = "gateway", "mlx_lm.server"
SERVERS = (GW, MLX)
F32_PROFILE = "smollm2-135m-f32"
Q4_MODEL = "smollm2-135m-instruct"
TINY = "tiny-random"
TINY_PROFILE = "tiny-random-8k"
SCENARIOS = ("f", "g", "h", "i")
# Why the unmet targets are not met, from measurements beside a full run: shown under the targets.
NOTES = ""
AGENTS = [f"agent-{i + 1}" for i in range(6)]
CHATS = ["chat-1", "chat-2"]
USERS = AGENTS + CHATS
# Outcomes that count as a clean end of a request ("answered": a 200 stream that finished).
CLEAN = ("answered", "429", "503")
# Outcomes of requests this script closed or cancelled itself (the flood's, once measured).
OURS = ("closed", "cancelled")

TOOLS = [
    ("read_file", "Read a file of the repository and return its text.", {"path": "string"}),
    ("write_file", "Write text to a file, replacing it.", {"path": "string", "text": "string"}),
    ("run_tests", "Run the test suite, or the tests under a path.", {"path": "string"}),
    ("search_code", "Search the repository for a regular expression.", {"pattern": "string", "glob": "string"}),
    ("list_dir", "List the entries of a directory.", {"path": "string"}),
    ("git_diff", "Show the working tree's changes.", {"staged": "boolean"}),
    ("shell", "Run a shell command in the repository root and return its output.", {"command": "string"}),
    ("web_fetch", "Fetch a documentation page and return it as text.", {"url": "string"}),
]  # fmt: skip
QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.", "How many legs has a spider?",
    "What does HTTP stand for?", "Give me a synonym for quick.", "What is 12 times 12?",
    "Who wrote Hamlet?", "What is the boiling point of water?", "Translate hello into Spanish.",
    "What colour is the sky on a clear day?",
]  # fmt: skip


# --------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------


@dataclass
class Sizes:
    agents: int = 6
    chats: int = 2
    f_system_tokens: int = 3000
    f_turns: int = 5
    f_user_tokens: int = 70
    f_answer_tokens: int = 32
    chat_turns: int = 5
    chat_answer_tokens: int = 32
    g_flood: int = 8
    g_prompt_tokens: int = 2000
    g_flood_tokens: int = 64
    g_probe_every_s: float = 2.0
    g_alone_probes: int = 5
    g_probes: int = 10
    g_probe_tokens: int = 8
    h_prefix_tokens: int = 1500
    h_answer_tokens: int = 16
    i_margin_bytes: int = 300_000_000  # the limit is weights + this
    i_requests: int = 8
    i_answer_tokens: int = 64
    request_timeout_s: float = 1800.0
    settle_timeout_s: float = 300.0
    restart_timeout_s: float = 300.0
    disk_wait_s: float = 15.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(agents=3, chats=1, f_system_tokens=300, f_turns=2, f_user_tokens=20, f_answer_tokens=4,
                   chat_turns=2, chat_answer_tokens=4, g_flood=3, g_prompt_tokens=200, g_flood_tokens=8,
                   g_probe_every_s=0.5, g_alone_probes=2, g_probes=2, g_probe_tokens=4, h_prefix_tokens=200,
                   h_answer_tokens=4, i_margin_bytes=0, i_requests=3, i_answer_tokens=4,
                   request_timeout_s=300.0, settle_timeout_s=120.0, restart_timeout_s=180.0,
                   disk_wait_s=3.0)  # fmt: skip


# --------------------------------------------------------------------------------------
# Pure helpers (unit-tested)
# --------------------------------------------------------------------------------------

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def kv_bytes_per_token(config: Mapping[str, Any]) -> int:
    """Bytes of K and V per token over all layers, from a model's config.json: 2 x layers x
    KV heads x head size x the activations' dtype size (float32 weights give float32 caches)."""
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float16")
    return 2 * layers * kv_heads * head_dim * DTYPE_BYTES.get(dtype, 2)


def weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def prompt_cache_budget(sizes: Sizes, kv_per_token: int) -> int:
    """About half of the agents' final prefixes (system prompt plus every turn's new tokens)."""
    final_prefix = sizes.f_system_tokens + sizes.f_turns * (sizes.f_user_tokens + sizes.f_answer_tokens)
    return max(1, sizes.agents // 2) * final_prefix * kv_per_token


def memory_load(sizes: Sizes, kv_per_token: int, margin: int) -> tuple[int, int]:
    """(prompt tokens per request, requests' total KV bytes) for (i): `i_requests` requests at
    once whose KV caches (prompt + answer) would need twice `margin`."""
    per_request = math.ceil(2 * margin / kv_per_token / sizes.i_requests)
    prompt = max(16, per_request - sizes.i_answer_tokens)
    return prompt, sizes.i_requests * (prompt + sizes.i_answer_tokens) * kv_per_token


def parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: not what the gateway sends


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON document by dotted path (lists by index)."""
    out: dict[str, float] = {}
    if isinstance(obj, bool):
        return out
    if isinstance(obj, int | float):
        out[prefix] = float(obj)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}"))
    return out


def pick(stats: Mapping[str, float], *words: str) -> float:
    """Sum of the leaves whose path names all `words` (case-insensitive); NaN when none does.
    Reads what /healthz reports without depending on its exact shape."""
    hits = [v for k, v in stats.items() if all(w in k.lower() for w in words)]
    return sum(hits) if hits else math.nan


def disk_hit_tokens(stats: Mapping[str, float]) -> float:
    return pick(stats, "disk", "hit", "token")


def disk_size(stats: Mapping[str, float]) -> float:
    value = pick(stats, "disk", "bytes")
    return value if not math.isnan(value) else pick(stats, "disk", "entries")


def outcome_counts(outcomes: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o] = counts.get(o, 0) + 1
    return dict(sorted(counts.items()))


def all_clean(counts: Mapping[str, int]) -> bool:
    """Every request (but those this script closed itself) answered or refused with 429/503."""
    return all(k in CLEAN or k in OURS for k in counts) and any(k in CLEAN for k in counts)


def fmt_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{v}× {k}" for k, v in counts.items()) or "none"


# --------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------


class Texts:
    """Deterministic filler prose, made once per (tokens, seed) with the model's tokenizer."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._cache: dict[tuple[int, int], str] = {}

    def filler(self, tokens: int, seed: int) -> str:
        key = (tokens, seed)
        if key not in self._cache:
            self._cache[key] = filler_text(self.model_dir, tokens, seed)
        return self._cache[key]

    def tokens(self, text: str) -> int:
        return text_tokens(self.model_dir, text)


def tool_list(n: int) -> str:
    tools = [{"type": "function", "function": {"name": name, "description": d, "parameters": {
        "type": "object", "properties": {k: {"type": t} for k, t in props.items()}, "required": list(props)}}}
        for name, d, props in TOOLS[:n]]  # fmt: skip
    return json.dumps(tools)


def agent_system(texts: Texts, nonce: str, agent: int, tokens: int) -> str:
    """An agent's own system prompt: a session line first (no prefix shared with other agents or
    runs), rules, then a JSON tool list of at most ~40 % of `tokens`, about `tokens` in all. The
    tools are text in the system prompt, not the `tools` field, so both servers see the same
    prompt whatever their chat templates do with tools."""
    n = len(TOOLS)
    while n > 0 and texts.tokens(tool_list(n)) > 0.4 * tokens:
        n -= 1
    tools = tool_list(n)
    rules_tokens = max(16, tokens - texts.tokens(tools) - 30)
    return (
        f"Session {nonce}-{agent}. You are a coding agent working in a repository.\n\n"
        f"{texts.filler(rules_tokens, seed=100 + agent)}\n\nTools (call one per turn as JSON):\n{tools}"
    )


def agent_turn(texts: Texts, agent: int, turn: int, tokens: int) -> str:
    return f"Turn {turn + 1}: tool output follows. {texts.filler(tokens, seed=1000 + agent * 50 + turn)}"


def run_nonce(scenario: str, run: int) -> str:
    return hashlib.sha256(f"team/{scenario}/{run}/{time.time_ns()}".encode()).hexdigest()[:8]


# --------------------------------------------------------------------------------------
# One request, and how it ended
# --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # answered | closed | 429 | 503 | http <n> | error | timeout | cancelled
    rec: StreamResult
    retry_after: float | None = None
    detail: str = ""


async def call(
    client: Any,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    timeout: float,
    stop: asyncio.Event | None = None,
) -> Outcome:
    """Stream one greedy chat completion and classify its end. A connection refused before any
    response is retried (mlx_lm.server listens with a backlog of 5) and keeps its first send time;
    nothing else is retried here."""
    import openai

    rec = StreamResult()
    first_send: float | None = None
    for attempt in range(4):
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(timeout):
                await stream_chat(client, model, messages, max_tokens, rec, stop)
        except openai.APIStatusError as exc:
            retry = parse_retry_after(exc.response.headers.get("retry-after"))
            return Outcome(str(exc.status_code) if exc.status_code in (429, 503) else f"http {exc.status_code}",
                           rec, retry, str(exc.message)[:200])  # fmt: skip
        except openai.APITimeoutError as exc:
            return Outcome("timeout", rec, detail=repr(exc)[:200])
        except openai.APIConnectionError as exc:
            first_send = first_send if first_send is not None else rec.t_send
            if rec.t_first is not None or attempt == 3:
                return Outcome("error", rec, detail=repr(exc)[:200])
            await asyncio.sleep(0.2)
            continue
        except TimeoutError:
            return Outcome("timeout", rec, detail=f"no end within {timeout:.0f} s")
        except openai.APIError as exc:  # an error event inside a 200 stream
            return Outcome("error", rec, detail=str(exc.message)[:200])
        if first_send is not None:
            rec.t_send = first_send
        if rec.closed_early:
            return Outcome("closed", rec)
        if rec.finish_reason is None:
            return Outcome("error", rec, detail="the stream ended without a finish_reason")
        return Outcome("answered", rec)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {fmt_load(loadavg())}] {msg}", flush=True)


def _client(base_url: str, key: str, timeout: float) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)


def read_proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in bytes (Linux /proc); empty when it is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


class Target:
    """One side of a scenario: the gateway (with its users' keys) or an mlx_lm.server."""

    name: str
    model: str
    sizes: Sizes

    def client(self, user: str) -> Any:
        raise NotImplementedError

    async def settle(self) -> None:
        raise NotImplementedError

    async def stats(self) -> dict[str, float]:
        return {}

    def pid(self) -> int | None:
        raise NotImplementedError

    async def kill_and_restart(self) -> float:
        """SIGKILL the process that holds the model; seconds until it serves again."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class GatewayTarget(Target):
    def __init__(self, gw: Any, model: str, keys: Mapping[str, str], sizes: Sizes) -> None:
        self.name, self.gw, self.model, self.keys, self.sizes = GW, gw, model, dict(keys), sizes
        self._clients: dict[str, Any] = {}

    def client(self, user: str) -> Any:
        if user not in self._clients:
            self._clients[user] = _client(
                self.gw.v1, self.keys.get(user, self.gw.key), self.sizes.request_timeout_s
            )
        return self._clients[user]

    async def _health(self) -> dict[str, Any]:
        import httpx

        from tests.conftest import health_headers

        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(self.gw.url + "/healthz", headers=health_headers())
            return dict(r.json()) if r.status_code == 200 else {}

    async def settle(self) -> None:
        deadline = time.monotonic() + self.sizes.settle_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                worker = (await self._health()).get("worker", {})
                if worker and not worker.get("active_requests") and not worker.get("queue_depth"):
                    break
            await asyncio.sleep(0.1)
        else:
            log("gateway: still busy after the settle timeout")
        await asyncio.sleep(0.2)

    async def stats(self) -> dict[str, float]:
        with contextlib.suppress(Exception):
            return flatten(await self._health())
        return {}

    def pid(self) -> int | None:
        with contextlib.suppress(Exception):
            return int(self.gw.health().json()["worker"]["pid"])
        return None

    async def kill_and_restart(self) -> float:
        old = self.pid()
        if old is None:
            raise RuntimeError("the gateway's /healthz names no worker pid")
        t0 = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + self.sizes.restart_timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            pid = await asyncio.to_thread(self.pid)
            if pid is not None and pid != old:
                return time.perf_counter() - t0
        raise TimeoutError(
            f"the supervisor did not restart the worker within {self.sizes.restart_timeout_s:.0f} s"
        )

    async def close(self) -> None:
        for c in self._clients.values():
            await c.close()


# Every mlx_lm.server this script started, stopped at exit whatever happened.
_MLX_SERVERS: list[Any] = []


def _start_mlx(model_dir: Path, log_dir: Path, args: Sequence[str]) -> Any:
    server = start_mlx_server(model_dir, log_dir, args)
    _MLX_SERVERS.append(server)
    return server


def stop_all_mlx() -> None:
    while _MLX_SERVERS:
        with contextlib.suppress(Exception):
            _MLX_SERVERS.pop().stop()


class MlxTarget(Target):
    def __init__(self, model_dir: Path, log_dir: Path, args: Sequence[str], sizes: Sizes) -> None:
        self.name, self.model, self.sizes = MLX, "default_model", sizes
        self.model_dir, self.log_dir, self.args = model_dir, log_dir, list(args)
        self.server = _start_mlx(model_dir, log_dir, self.args)
        self._client: Any = None

    def client(self, user: str) -> Any:
        if self._client is None:
            self._client = _client(self.server.v1, "none", self.sizes.request_timeout_s)
        return self._client

    async def settle(self) -> None:
        await asyncio.sleep(1.0)  # aborted streams stop at their next write

    def pid(self) -> int | None:
        return self.server.proc.pid if self.server.proc.poll() is None else None

    async def kill_and_restart(self) -> float:
        t0 = time.perf_counter()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.proc.pid, signal.SIGKILL)
        self.server.proc.wait()
        if self._client is not None:
            await self._client.close()
            self._client = None
        # No supervisor: the benchmark starts it again, as a process manager would.
        self.server = await asyncio.to_thread(_start_mlx, self.model_dir, self.log_dir, self.args)
        return time.perf_counter() - t0

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        self.server.stop()


async def call_patiently(
    t: Target, user: str, messages: list[dict[str, str]], max_tokens: int, tries: int = 4
) -> tuple[Outcome, list[str]]:
    """`call`, again after a 429 or 503 (waiting its Retry-After, at most 10 s) up to `tries`
    times; returns the last outcome and the kinds of every attempt. Its TTFT is the last try's."""
    kinds: list[str] = []
    out = Outcome("error", StreamResult())
    for _ in range(tries):
        out = await call(t.client(user), t.model, messages, max_tokens, t.sizes.request_timeout_s)
        kinds.append(out.kind)
        if out.kind not in ("429", "503"):
            break
        await asyncio.sleep(min(10.0, out.retry_after if out.retry_after is not None else 1.0))
    return out, kinds


async def warm_up(t: Target, user: str, tag: str) -> None:
    """One short request (it loads the model); a worker that is still starting may answer 503."""
    deadline = time.monotonic() + t.sizes.restart_timeout_s
    while True:
        out, _ = await call_patiently(t, user, [{"role": "user", "content": f"Hello ({tag})"}], 4)
        if out.kind == "answered":
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{t.name}: the warm-up request ended with {out.kind}: {out.detail}")
        await asyncio.sleep(1.0)
    await t.settle()


# --------------------------------------------------------------------------------------
# Scenarios (one run against one server)
# --------------------------------------------------------------------------------------


@dataclass
class Ctx:
    sizes: Sizes
    texts: Texts
    kv_per_token: int


async def scenario_f(t: Target, ctx: Ctx, nonce: str) -> dict[str, Any]:
    sz = ctx.sizes
    agent_turns: list[tuple[int, int, Outcome]] = []
    chat_turns: list[Outcome] = []
    refused: list[str] = []  # 429s and 503s that a later try of the same turn got past
    systems = [agent_system(ctx.texts, nonce, a, sz.f_system_tokens) for a in range(sz.agents)]
    before = await t.stats()

    async def agent(a: int) -> None:
        messages = [{"role": "system", "content": systems[a]}]
        for turn in range(sz.f_turns):
            messages.append({"role": "user", "content": agent_turn(ctx.texts, a, turn, sz.f_user_tokens)})
            out, kinds = await call_patiently(t, AGENTS[a], messages, sz.f_answer_tokens)
            agent_turns.append((a, turn, out))
            refused.extend(k for k in kinds[:-1])
            if out.kind != "answered":
                return  # a refused turn ends the agent's session: its history would differ
            messages.append({"role": "assistant", "content": out.rec.text})

    async def chat(c: int) -> None:
        for turn in range(sz.chat_turns):
            q = QUESTIONS[(c * 3 + turn) % len(QUESTIONS)]
            messages = [{"role": "user", "content": f"[{nonce}] {q}"}]
            out, kinds = await call_patiently(t, CHATS[c % len(CHATS)], messages, sz.chat_answer_tokens)
            chat_turns.append(out)
            refused.extend(k for k in kinds[:-1])

    t0 = time.perf_counter()
    await asyncio.gather(*(agent(a) for a in range(sz.agents)), *(chat(c) for c in range(sz.chats)))
    total = time.perf_counter() - t0
    await t.settle()
    after = await t.stats()
    follow = [o for _, turn, o in agent_turns if turn > 0 and o.kind == "answered"]
    first = [o for _, turn, o in agent_turns if turn == 0 and o.kind == "answered"]
    prompt = sum(o.rec.prompt_tokens for o in follow)
    cached = sum(o.rec.cached_tokens or 0 for o in follow)
    disk = disk_hit_tokens(after) - disk_hit_tokens(before) if t.name == GW else 0.0
    return {
        "total_s": total,
        "follow_ttft_p50": percentile([o.rec.ttft for o in follow], 50),
        "follow_ttft_p95": percentile([o.rec.ttft for o in follow], 95),
        "first_ttft_p50": percentile([o.rec.ttft for o in first], 50),
        "chat_ttft_p95": percentile([o.rec.ttft for o in chat_turns if o.kind == "answered"], 95),
        "chat_ttft_p50": percentile([o.rec.ttft for o in chat_turns if o.kind == "answered"], 50),
        "follow_prompt_tokens": prompt,
        "follow_cached_tokens": cached,
        "cache_share": safe_ratio(cached, prompt),
        # Disk hits over every request of the scenario (the gateway's counters), as a share of the
        # agents' follow-up prompt tokens; memory = the rest of the cached tokens.
        "disk_share": safe_ratio(disk, prompt),
        "memory_share": safe_ratio(cached - disk, prompt) if not math.isnan(disk) else math.nan,
        "first_prompt_tokens_p50": percentile([o.rec.prompt_tokens for o in first], 50),
        "outcomes": outcome_counts([o.kind for _, _, o in agent_turns] + [o.kind for o in chat_turns] + refused),
        "details": sorted({o.detail for _, _, o in agent_turns if o.detail} | {o.detail for o in chat_turns if o.detail})[:5],
        "requests": len(agent_turns) + len(chat_turns),
    }  # fmt: skip


async def scenario_g(t: Target, ctx: Ctx, nonce: str) -> dict[str, Any]:
    sz = ctx.sizes
    flood_user, probe_user = AGENTS[0], CHATS[0]

    async def probes(n: int, tag: str) -> list[Outcome]:
        """`n` short requests sent every `g_probe_every_s`, whether or not the earlier ones are
        answered yet (a person asking on a schedule); their outcomes once all have ended."""

        async def probe(i: int) -> Outcome:
            await asyncio.sleep(i * sz.g_probe_every_s)
            q = QUESTIONS[i % len(QUESTIONS)]
            messages = [{"role": "user", "content": f"[{nonce}-{tag}{i}] {q}"}]
            return await call(
                t.client(probe_user), t.model, messages, sz.g_probe_tokens, sz.request_timeout_s
            )

        return list(await asyncio.gather(*(probe(i) for i in range(n))))

    alone = await probes(sz.g_alone_probes, "alone")
    await t.settle()

    flood_outcomes: list[str] = []
    body = ctx.texts.filler(sz.g_prompt_tokens, seed=7)
    counter = iter(range(10**9))

    stopping = asyncio.Event()

    async def flooder(slot: int) -> None:
        while not stopping.is_set():
            n = next(counter)
            # A distinct first line per request: nothing of it is in any cache.
            messages = [
                {"role": "user", "content": f"[{nonce} flood {n}] {body}\n\nSummarize the rules above."}
            ]
            try:
                out = await call(
                    t.client(flood_user), t.model, messages, sz.g_flood_tokens, sz.request_timeout_s
                )
            except asyncio.CancelledError:
                flood_outcomes.append("cancelled")
                raise
            flood_outcomes.append(out.kind)
            if out.kind == "429":
                await asyncio.sleep(min(5.0, out.retry_after if out.retry_after is not None else 1.0))
            elif out.kind != "answered":
                await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(flooder(s)) for s in range(sz.g_flood)]
    try:
        await asyncio.sleep(sz.g_probe_every_s)  # the flood is queued and prefilling
        under = await probes(sz.g_probes, "flood")
    finally:
        stopping.set()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=60)
    await t.settle()
    alone_ttft = median([o.rec.ttft for o in alone if o.kind == "answered"])
    under_ttft = [o.rec.ttft for o in under if o.kind == "answered"]
    return {
        "alone_ttft": alone_ttft,
        "flood_ttft_p95": percentile(under_ttft, 95),
        "flood_ttft_p50": percentile(under_ttft, 50),
        "ratio": safe_ratio(percentile(under_ttft, 95), alone_ttft),
        "probe_outcomes": outcome_counts([o.kind for o in alone + under]),
        "flood_outcomes": outcome_counts(flood_outcomes),
        "retry_after": sorted({o.retry_after for o in under if o.retry_after is not None}),
        "details": sorted({o.detail for o in alone + under if o.detail})[:5],
    }


async def scenario_h(t: Target, ctx: Ctx, nonce: str) -> dict[str, Any]:
    sz = ctx.sizes
    user = AGENTS[1]
    system = f"Session {nonce}. You are the assistant of a support desk. {ctx.texts.filler(sz.h_prefix_tokens, seed=3)}"
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "First question: what is rule 1?"},
    ]
    before = await t.stats()
    cold = await call(t.client(user), t.model, messages, sz.h_answer_tokens, sz.request_timeout_s)
    if cold.kind != "answered":
        raise RuntimeError(f"{t.name}: the cold turn ended with {cold.kind}: {cold.detail}")
    await t.settle()
    disk_seen = False
    if t.name == GW:  # give the disk tier a moment to hold the prefix (bounded)
        deadline = time.monotonic() + sz.disk_wait_s
        while time.monotonic() < deadline:
            if disk_size(await t.stats()) > disk_size(before):
                disk_seen = True
                break
            await asyncio.sleep(0.25)
    old_pid = t.pid()
    restart_s = await t.kill_and_restart()
    new_pid = t.pid()
    await warm_up(t, CHATS[1], f"after restart {nonce}")
    messages += [{"role": "assistant", "content": cold.rec.text},
                 {"role": "user", "content": "Second question: and what is rule 2?"}]  # fmt: skip
    follow = await call(t.client(user), t.model, messages, sz.h_answer_tokens, sz.request_timeout_s)
    await t.settle()
    return {
        "cold_ttft": cold.rec.ttft,
        "cold_prompt_tokens": cold.rec.prompt_tokens,
        "follow_ttft": follow.rec.ttft if follow.kind == "answered" else math.nan,
        "follow_prompt_tokens": follow.rec.prompt_tokens,
        "follow_cached_tokens": follow.rec.cached_tokens,
        "ratio": safe_ratio(follow.rec.ttft, cold.rec.ttft) if follow.kind == "answered" else math.nan,
        "restart_s": restart_s,
        "pid_changed": old_pid is not None and new_pid is not None and old_pid != new_pid,
        "disk_seen": disk_seen,
        "outcomes": outcome_counts([cold.kind, follow.kind]),
        "details": [o.detail for o in (cold, follow) if o.detail],
    }


async def scenario_i(t: Target, ctx: Ctx, nonce: str, limit: int, prompt_tokens: int) -> dict[str, Any]:
    sz = ctx.sizes
    pid = t.pid()
    if pid is None:
        raise RuntimeError(f"{t.name}: no pid to watch")
    peak_sampled = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak_sampled
        while not stop.is_set():
            peak_sampled = max(peak_sampled, read_proc_status(pid).get("VmRSS", 0))
            await asyncio.sleep(0.05)

    body = ctx.texts.filler(prompt_tokens, seed=11)
    sampler = asyncio.create_task(sample())
    try:
        outs = await asyncio.gather(*(
            call(t.client(USERS[k % len(USERS)]), t.model,
                 [{"role": "user", "content": f"[{nonce} load {k}] {body}\n\nSummarize the rules above."}],
                 sz.i_answer_tokens, sz.request_timeout_s)
            for k in range(sz.i_requests)
        ))  # fmt: skip
    finally:
        stop.set()
        await sampler
    status = read_proc_status(pid)
    alive = bool(status) and t.pid() == pid
    await t.settle()
    hwm = status.get("VmHWM", math.nan) if status else math.nan
    peak = max(peak_sampled, hwm) if not math.isnan(hwm) else float(peak_sampled or math.nan)
    return {
        "limit_bytes": limit,
        "peak_bytes": peak,
        "peak_sampled_bytes": peak_sampled,
        "hwm_bytes": hwm,
        "peak_vs_limit": safe_ratio(peak, limit),
        "survived": alive,
        "prompt_tokens": [o.rec.prompt_tokens for o in outs],
        "outcomes": outcome_counts([o.kind for o in outs]),
        "answered_with_tokens": sum(1 for o in outs if o.kind == "answered" and o.rec.tokens > 0),
        "retry_after": sorted({o.retry_after for o in outs if o.retry_after is not None}),
        "details": sorted({o.detail for o in outs if o.detail})[:5],
    }


# --------------------------------------------------------------------------------------
# Summaries, targets and the report (pure)
# --------------------------------------------------------------------------------------


def _col(runs: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    out = []
    for r in runs:
        v = r.get(key)
        out.append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan)
    return out


def _merge_counts(runs: Sequence[Mapping[str, Any]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in runs:
        for k, v in r.get(key, {}).items():
            total[k] = total.get(k, 0) + int(v)
    return dict(sorted(total.items()))


NUMERIC = {
    "f": ("total_s", "follow_ttft_p50", "follow_ttft_p95", "first_ttft_p50", "chat_ttft_p50", "chat_ttft_p95",
          "cache_share", "memory_share", "disk_share", "first_prompt_tokens_p50"),
    "g": ("alone_ttft", "flood_ttft_p50", "flood_ttft_p95", "ratio"),
    "h": ("cold_ttft", "cold_prompt_tokens", "follow_ttft", "follow_prompt_tokens", "follow_cached_tokens", "ratio",
          "restart_s"),
    "i": ("limit_bytes", "peak_bytes", "hwm_bytes", "peak_sampled_bytes", "peak_vs_limit", "answered_with_tokens"),
}  # fmt: skip
COUNTS = {
    "f": ("outcomes",),
    "g": ("probe_outcomes", "flood_outcomes"),
    "h": ("outcomes",),
    "i": ("outcomes",),
}


def summarize(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Medians over runs per server, and the ratios the targets read."""
    summary: dict[str, Any] = {}
    for sc in SCENARIOS:
        data = raw.get(sc)
        if not isinstance(data, Mapping) or "runs" not in data:
            continue
        runs = data["runs"]
        out: dict[str, Any] = {}
        for name in SERVERS:
            rs = runs.get(name, [])
            x: dict[str, Any] = {k: median(_col(rs, k)) for k in NUMERIC[sc]}
            for k in COUNTS[sc]:
                x[k] = _merge_counts(rs, k)
            if sc == "h":
                x["pid_changed"] = all(r.get("pid_changed") for r in rs) if rs else None
                x["disk_seen"] = any(r.get("disk_seen") for r in rs)
            if sc == "i":
                x["survived"] = all(r.get("survived") for r in rs) if rs else None
            x["runs"] = len(rs)
            out[name] = x
        gw, mx = runs.get(GW, []), runs.get(MLX, [])
        if sc == "f":
            out["total_vs_mlx"] = paired_ratio(
                list(zip(_col(gw, "total_s"), _col(mx, "total_s"), strict=False))
            )
            out["follow_ttft_p50_vs_mlx"] = paired_ratio(
                list(zip(_col(gw, "follow_ttft_p50"), _col(mx, "follow_ttft_p50"), strict=False))
            )
        summary[sc] = out
    return summary


@dataclass
class Goal:
    scenario: str
    label: str
    goal: str  # "<= 0.6", ">= 0.95" or "yes"
    measured: float | bool | None

    @property
    def met(self) -> bool | None:
        if self.measured is None or (isinstance(self.measured, float) and math.isnan(self.measured)):
            return None
        if self.goal == "yes":
            return bool(self.measured)
        op, value = self.goal.split()
        return float(self.measured) >= float(value) if op == ">=" else float(self.measured) <= float(value)


def goals(summary: Mapping[str, Any]) -> list[Goal]:
    nan = math.nan

    def g(sc: str, *path: str) -> Any:
        node: Any = summary.get(sc, {})
        for p in path:
            node = node.get(p, nan) if isinstance(node, Mapping) else nan
        return node

    i_gw = summary.get("i", {}).get(GW)
    return [
        Goal("f", "agents: total time, gateway / mlx_lm.server", "<= 0.6", g("f", "total_vs_mlx")),
        Goal("f", "agents: follow-up prompt tokens served from cache (gateway)", ">= 0.95", g("f", GW, "cache_share")),
        Goal("g", "flood: second user's TTFT p95 under the flood / alone (gateway)", "<= 3.0", g("g", GW, "ratio")),
        Goal("h", "restart: follow-up TTFT after kill -9 / cold prefill (gateway)", "<= 0.1", g("h", GW, "ratio")),
        Goal("i", "memory: worker peak RSS / MLXM_MEMORY_LIMIT", "<= 1.05", g("i", GW, "peak_vs_limit")),
        Goal("i", "memory: the worker survived (no crash, same pid)", "yes", i_gw.get("survived") if i_gw else None),
        Goal("i", "memory: every request answered with tokens or a clear 429/503", "yes",
             all_clean(i_gw["outcomes"]) if i_gw and i_gw.get("outcomes") else None),
    ]  # fmt: skip


def _r(x: float) -> str:
    return fmt(x, "{:.2f}×")


def _s(x: float) -> str:
    return fmt(x, "{:.2f} s")


def _pct(x: float) -> str:
    return fmt(x * 100 if isinstance(x, float) and not math.isnan(x) else math.nan, "{:.0f}%")


def _mb(x: float) -> str:
    """Bytes in decimal units: GB, MB, or kB below 10 MB (the smoke run's tiny budgets)."""
    if not isinstance(x, int | float) or math.isnan(x):
        return "n/a"
    if x >= 1e9:
        return f"{x / 1e9:.2f} GB"
    return f"{x / 1e6:.0f} MB" if x >= 10e6 else f"{x / 1e3:.0f} kB"


def _met(goal: Goal) -> str:
    return "not measured" if goal.met is None else ("**met**" if goal.met else "not met")


def _measured(goal: Goal) -> str:
    if isinstance(goal.measured, bool):
        return "yes" if goal.measured else "no"
    return fmt(goal.measured if goal.measured is not None else math.nan, "{:.2f}")


def render_goals(gs: Sequence[Goal]) -> str:
    rows = [[f"({x.scenario})", x.label, x.goal.replace(">=", "≥").replace("<=", "≤"), _measured(x), _met(x)]
            for x in gs]  # fmt: skip
    return md_table(["scenario", "target", "goal", "measured", "status"], rows)


def render_f(f: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    rows = []
    for name in SERVERS:
        x = f[name]
        rows.append([
            name, _s(x["total_s"]), f"{_s(x['follow_ttft_p50'])} / {_s(x['follow_ttft_p95'])}",
            _s(x["first_ttft_p50"]), _pct(x["cache_share"]),
            f"{_pct(x['memory_share'])} / {_pct(x['disk_share'])}", _s(x["chat_ttft_p95"]), fmt_counts(x["outcomes"]),
        ])  # fmt: skip
    header = ["server", "total", "agents' follow-up TTFT p50 / p95", "agents' first-turn TTFT p50",
              "follow-up prompt tokens from cache", "from memory / from disk", "chat users' TTFT p95",
              "requests"]  # fmt: skip
    return (
        f"{meta['f_desc']} Total time gateway / mlx_lm.server: **{_r(f['total_vs_mlx'])}**; follow-up TTFT p50 "
        f"gateway / mlx_lm.server: {_r(f['follow_ttft_p50_vs_mlx'])}.\n\n" + md_table(header, rows)
    )


def render_g(g: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    rows = []
    for name in SERVERS:
        x = g[name]
        rows.append([name, _s(x["alone_ttft"]), f"{_s(x['flood_ttft_p50'])} / {_s(x['flood_ttft_p95'])}",
                     f"**{_r(x['ratio'])}**", fmt_counts(x["probe_outcomes"]), fmt_counts(x["flood_outcomes"])])  # fmt: skip
    header = ["server", "second user's TTFT alone (median)", "under the flood p50 / p95", "p95 flood / alone",
              "second user's requests", "flood requests"]  # fmt: skip
    return f"{meta['g_desc']}\n\n" + md_table(header, rows)


def render_h(h: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    rows = []
    for name in SERVERS:
        x = h[name]
        rows.append([
            name, f"{_s(x['cold_ttft'])} ({fmt(x['cold_prompt_tokens'], '{:.0f}')} tok)",
            f"{_s(x['follow_ttft'])} ({fmt(x['follow_cached_tokens'], '{:.0f}')} of "
            f"{fmt(x['follow_prompt_tokens'], '{:.0f}')} tok cached)",
            f"**{_r(x['ratio'])}**", _s(x["restart_s"]), fmt_counts(x["outcomes"]),
        ])  # fmt: skip
    header = ["server", "cold turn TTFT", "follow-up TTFT after kill -9 and restart", "follow-up / cold",
              "kill to serving again", "requests"]  # fmt: skip
    return f"{meta['h_desc']}\n\n" + md_table(header, rows)


def render_i(i: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    rows = []
    for name in SERVERS:
        x = i[name]
        survived = {True: "yes", False: "**no**", None: "n/a"}[x.get("survived")]
        rows.append([
            name, _mb(x["limit_bytes"]) if name == GW else f"none ({_mb(x['limit_bytes'])} for the ratio)",
            f"{_mb(x['peak_bytes'])} (VmHWM {_mb(x['hwm_bytes'])}, sampled {_mb(x['peak_sampled_bytes'])})",
            f"**{_r(x['peak_vs_limit'])}**", survived, fmt_counts(x["outcomes"]),
        ])  # fmt: skip
    header = ["server", "memory limit", "peak resident memory", "peak / limit", "survived", "requests"]
    return f"{meta['i_desc']}\n\n" + md_table(header, rows)


def render_report(summary: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    parts = [
        f"Command: `{meta['command']}`",
        "",
        f"- Machine: {meta['machine']}",
        f"- Date: {meta['date']}; wall time {meta.get('wall_min', math.nan):.0f} min",
        f"- Code: {meta.get('code', 'unknown')}",
        f"- {meta['versions']}",
        f"- BLAS: {meta['blas']}",
        f"- Load average (1/5/15 min): start {meta['load_start']}, end {meta['load_end']} (the machine is shared)",
        f"- Model: {meta['model']}; KV cache {meta['kv_per_token']:,} bytes per token, weights "
        f"{_mb(meta['weights_bytes'])}",
        f"- Prompt-cache budget, both servers: {_mb(meta['prompt_cache_bytes'])} (`MLXM_PROMPT_CACHE_BYTES` / "
        f"`--prompt-cache-bytes`; about half of the agents' final prefixes); gateway disk tier "
        f"`MLXM_DISK_CACHE_BYTES` {_mb(meta['disk_cache_bytes'])}",
        f"- mlx_lm.server: `{meta['mlx_args']}`, a fresh one per scenario",
        f"- Gateway environment: {meta['gateway_env']}",
        f"- Runs: {meta['runs']} per scenario, the servers' order alternating per run; medians, and ratios as "
        "medians of per-run ratios. Client: openai `AsyncOpenAI`, streaming, temperature 0, usage in the last "
        "chunk; TTFT = first content chunk - send. Cached tokens are the servers' own "
        "`usage.prompt_tokens_details.cached_tokens`; disk hits the gateway's /healthz counters.",
        "",
        "### Targets",
        "",
        render_goals(goals(summary)),
    ]
    if meta.get("notes"):
        parts += ["", str(meta["notes"])]
    for sc, title, render in (("f", "(f) agents", render_f), ("g", "(g) flood", render_g),
                              ("h", "(h) restart", render_h), ("i", "(i) memory", render_i)):  # fmt: skip
        if sc in summary:
            parts += ["", f"### {title}", "", render(summary[sc], meta)]
    if meta.get("errors"):
        parts += ["", "### Failed scenarios", "", *[f"- {e}" for e in meta["errors"]]]
    return "\n".join(parts) + "\n"


def describe(sizes: Sizes, meta: Mapping[str, Any]) -> dict[str, str]:
    return {
        "f_desc": f"{sizes.agents} agent users (own ~{sizes.f_system_tokens}-token system prompt with a tool list, "
        f"{sizes.f_turns} turns, ~{sizes.f_user_tokens}-token user messages, {sizes.f_answer_tokens}-token answers) "
        f"and {sizes.chats} chat user(s) ({sizes.chat_turns} short questions each) at once, each user with its "
        "own key on the gateway.",
        "g_desc": f"One user keeps {sizes.g_flood} requests with ~{sizes.g_prompt_tokens}-token prompts "
        f"({sizes.g_flood_tokens}-token answers) in flight; another sends a short request "
        f"({sizes.g_probe_tokens} tokens) every {sizes.g_probe_every_s:g} s, {sizes.g_probes} under the flood and "
        f"{sizes.g_alone_probes} alone before it.",
        "h_desc": f"A ~{sizes.h_prefix_tokens}-token system prompt, turn 1 cold; SIGKILL of the gateway's worker "
        "(`serve` restarts it) or of mlx_lm.server (started again by the benchmark); a short unrelated request "
        "loads the model; then turn 2.",
        "i_desc": f"`MLXM_MEMORY_LIMIT` = weights + {_mb(meta['i_margin_bytes'])} = {_mb(meta['i_limit_bytes'])}; "
        f"{sizes.i_requests} requests at once with ~{meta['i_prompt_tokens']}-token prompts and "
        f"{sizes.i_answer_tokens}-token answers, whose KV caches need {_mb(meta['i_kv_bytes'])} (twice the margin). "
        "Peak = the larger of the process's VmHWM and its VmRSS sampled every 50 ms.",
    }


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------


def create_users(gw: Any, names: Sequence[str]) -> dict[str, str]:
    """Member users with one API key each, through the product's services (`manage.py shell`)."""
    from tests.conftest import manage

    env = {**os.environ, "MLXM_DATA_DIR": str(gw.data_dir), "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}
    env.pop("DATABASE_URL", None)
    code = (
        "import json, secrets\n"
        "from django.contrib.auth import get_user_model\n"
        "from mlxmanager.accounts.services import api_key_create, user_create\n"
        "out = {}\n"
        f"for name in {list(names)!r}:\n"
        "    user = get_user_model().objects.filter(username=name).first()\n"
        "    if user is None:\n"
        "        user = user_create(username=name, password='Bench-' + secrets.token_urlsafe(24))\n"
        "    out[name] = api_key_create(user=user, name='bench-team')[1]\n"
        "print('KEYS ' + json.dumps(out))\n"
    )
    lines = [line for line in manage("shell", "-c", code, env=env).splitlines() if line.startswith("KEYS ")]
    if not lines:
        raise RuntimeError("could not create the benchmark's users")
    return dict(json.loads(lines[-1][5:]))


@contextlib.contextmanager
def gateway(run_dir: Path, paths: Mapping[str, Path], env: Mapping[str, str], profile: str,
            model_dir: Path) -> Iterator[tuple[Any, dict[str, str]]]:  # fmt: skip
    from tests.conftest import stop_gateway

    gw = start_gateway_env(run_dir, dict(paths), env)
    try:
        register_profile(gw, profile, model_dir, "benchmark copy (bench_team.py)")
        yield gw, create_users(gw, USERS)
    finally:
        stop_gateway(gw)


def _order(run: int) -> list[str]:
    return [GW, MLX] if run % 2 == 0 else [MLX, GW]


async def run_scenario(
    sc: str,
    run: int,
    order: Sequence[str],
    make: Callable[[str], Awaitable[Target]],
    body: Callable[[Target, str], Awaitable[dict[str, Any]]],
    raw: dict[str, Any],
) -> None:
    runs = raw.setdefault(sc, {"runs": {GW: [], MLX: []}})["runs"]
    nonce = run_nonce(sc, run)
    for name in order:
        t = await make(name)
        try:
            await warm_up(t, CHATS[1], f"{sc}{run} {nonce}")
            before = loadavg()
            r = await body(t, nonce)
            r["load"] = [before, loadavg()]
            runs[name].append(r)
            log(f"({sc}) run {run + 1} {name}: " + json.dumps({k: v for k, v in r.items() if k in NUMERIC[sc]
                                                              or k in COUNTS[sc]}, default=str))  # fmt: skip
        finally:
            await t.close()


def parse_env(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--gateway-env wants KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default=F32_PROFILE, choices=[F32_PROFILE, TINY])
    parser.add_argument("--runs", type=int, default=1, help="runs per scenario (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="subset of f,g,h,i")
    parser.add_argument("--memory-margin", type=float, default=None,
                        help="(i): the limit is the weights plus this many bytes (default 300e6; tiny with --quick)")  # fmt: skip
    parser.add_argument("--prompt-cache-bytes", type=int, default=None,
                        help="both servers' prompt-cache budget (default: about half of the agents' prefixes)")  # fmt: skip
    parser.add_argument("--disk-cache-bytes", type=int, default=None,
                        help="the gateway's MLXM_DISK_CACHE_BYTES (default 8x the prompt-cache budget)")  # fmt: skip
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for every gateway (e.g. MLXM_MAX_QUEUE=16)")  # fmt: skip
    parser.add_argument(
        "--mlx-server-args", default=" ".join(MLX_SERVER_ARGS), help="extra mlx_lm.server flags"
    )
    parser.add_argument("--write", type=Path, default=None, help="update this Markdown file's section")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)

    def _terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # run the finally blocks: every server is stopped

    signal.signal(signal.SIGTERM, _terminate)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {','.join(SCENARIOS)}")
    sizes = Sizes.quick() if args.quick else Sizes()
    t_start = time.monotonic()
    os.environ.setdefault("MLXM_DATA_DIR", str(ROOT / ".data" / "bench"))
    from tests.conftest import _shared_dir

    base_dir = Path(os.environ["MLXM_DATA_DIR"]).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    log(f"building/locating the demo models under {_shared_dir()} ...")
    paths = prepare_models(_shared_dir())
    if args.model == F32_PROFILE:
        if Q4_MODEL not in paths or not (paths[Q4_MODEL] / "config.json").exists():
            raise SystemExit(
                f"the demo model {Q4_MODEL} is missing under {_shared_dir()}: run `make demo-models`"
            )
        model_dir = ensure_dequantized(paths[Q4_MODEL], base_dir / "bench-models" / f"{Q4_MODEL}-f32")
        profile = F32_PROFILE
    else:
        model_dir = ensure_context_copy(paths[TINY], base_dir / "bench-models" / f"{TINY}-8k", 8192)
        profile = TINY_PROFILE
    if not (model_dir / "config.json").exists() or not list(model_dir.glob("*.safetensors")):
        raise SystemExit(f"model files missing in {model_dir} (config.json and *.safetensors)")
    config = json.loads((model_dir / "config.json").read_text())
    kv = kv_bytes_per_token(config)
    weights = weights_bytes(model_dir)
    cache_bytes = args.prompt_cache_bytes or prompt_cache_budget(sizes, kv)
    disk_bytes = args.disk_cache_bytes or 8 * cache_bytes
    margin = int(args.memory_margin) if args.memory_margin is not None else (
        sizes.i_margin_bytes or 1200 * kv)  # quick: KV of 2,400 tokens at twice the margin  # fmt: skip
    i_prompt, i_kv = memory_load(sizes, kv, margin)
    limit = weights + margin
    extra = parse_env(args.gateway_env)
    base_env = {
        "MLXM_PROMPT_CACHE_BYTES": str(cache_bytes),
        "MLXM_DISK_CACHE_BYTES": str(disk_bytes),
        **extra,
    }
    # (i): a prompt-cache share that fits in the margin (a third of it), the same on both servers.
    # MLXM_MEMORY_LIMIT_BYTES: the older name of the limit, the same number.
    i_cache = min(cache_bytes, margin // 3)
    mem_env = {**base_env, "MLXM_PROMPT_CACHE_BYTES": str(i_cache),
               "MLXM_MEMORY_LIMIT": str(limit), "MLXM_MEMORY_LIMIT_BYTES": str(limit),
               "MLXM_QUEUE_TIMEOUT": extra.get("MLXM_QUEUE_TIMEOUT", str(int(sizes.request_timeout_s / 3)))}  # fmt: skip
    if args.quick:
        # A smoke run's margin is a tiny model's KV (kB): the worker process itself (tens of MB)
        # would not fit under it, so its limit covers weights, KV and prompt caches only.
        mem_env["MLXM_MEMORY_COUNT_PROCESS"] = "off"
    mlx_args = [
        *args.mlx_server_args.split(),
        "--prompt-cache-bytes",
        str(cache_bytes),
        "--prompt-cache-size",
        "32",
    ]
    mlx_args_i = [*mlx_args[:-4], "--prompt-cache-bytes", str(i_cache), "--prompt-cache-size", "32"]
    texts = Texts(model_dir)
    ctx = Ctx(sizes, texts, kv)
    run_dir = Path(tempfile.mkdtemp(prefix="team-", dir=base_dir))
    raw: dict[str, Any] = {}
    errors: list[str] = []
    load_start = loadavg()
    log(f"model {model_dir}: {kv} KV bytes/token, weights {_mb(weights)}, prompt cache {_mb(cache_bytes)}")

    async def drive(gw: Any, keys: dict[str, str], group: Sequence[str], mlx_args: list[str]) -> None:
        async def make(name: str) -> Target:
            if name == GW:
                return GatewayTarget(gw, profile, keys, sizes)
            return await asyncio.to_thread(MlxTarget, model_dir, run_dir / "mlx", mlx_args, sizes)

        bodies: dict[str, Callable[[Target, str], Awaitable[dict[str, Any]]]] = {
            "f": lambda t, n: scenario_f(t, ctx, n),
            "g": lambda t, n: scenario_g(t, ctx, n),
            "h": lambda t, n: scenario_h(t, ctx, n),
            "i": lambda t, n: scenario_i(t, ctx, n, limit, i_prompt),
        }
        for sc in group:
            for run in range(args.runs):
                try:
                    await run_scenario(sc, run, _order(run), make, bodies[sc], raw)
                    # What is measured so far survives an interrupted run.
                    (base_dir / "team-results.partial.json").write_text(
                        json.dumps(raw, indent=1, default=str)
                    )
                except Exception as exc:  # keep what the other scenarios measure
                    log(f"({sc}) run {run + 1} FAILED: {exc!r}")
                    errors.append(f"({sc}) run {run + 1}: {exc!r}")
                    if gw.proc.poll() is not None:
                        raise
                    with contextlib.suppress(Exception):
                        await GatewayTarget(gw, profile, keys, sizes).settle()

    try:
        # (f), (g), then (h) (which kills the worker) on one gateway; (i) on its own, with the limit.
        main_group = [s for s in ("f", "g", "h") if s in scenarios]
        if main_group:
            log(f"starting the gateway for {','.join(main_group)} ...")
            with gateway(run_dir / "gw", paths, base_env, profile, model_dir) as (gw, keys):
                asyncio.run(drive(gw, keys, main_group, mlx_args))
        if "i" in scenarios:
            log(f"starting the gateway for (i) with MLXM_MEMORY_LIMIT={limit} ...")
            with gateway(run_dir / "gw-mem", paths, mem_env, profile, model_dir) as (gw, keys):
                asyncio.run(drive(gw, keys, ["i"], mlx_args_i))
    finally:
        stop_all_mlx()
        load_end = loadavg()
    threads = default_openblas_threads()
    meta: dict[str, Any] = {
        "command": command_line(__file__, argv),
        "code": code_version(),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}",
        "date": utc_now(),
        "versions": f"mlx {version('mlx')}, mlx-lm {version('mlx-lm')}, openai {version('openai')}, "
        f"Python {platform.python_version()}",
        "blas": f"scipy-openblas32 {version('scipy-openblas32')}, OPENBLAS_NUM_THREADS={threads}, preloaded by "
        "`inference.worker.blas.preload_blas()` in the worker and in mlx_lm.server",
        "load_start": fmt_load(load_start),
        "load_end": fmt_load(load_end),
        "model": (
            f"SmolLM2-135M-Instruct float32 (`mlx_lm convert --dequantize` of the q4 demo model), profile "
            f"`{profile}`"
            if args.model == F32_PROFILE
            else f"`{TINY}` (8k-context copy), profile `{profile}`"
        )
        + (" — **--quick sizes: a smoke run, not a measurement**" if args.quick else ""),  # fmt: skip
        "kv_per_token": kv,
        "weights_bytes": weights,
        "prompt_cache_bytes": cache_bytes,
        "disk_cache_bytes": disk_bytes,
        "i_margin_bytes": margin,
        "i_limit_bytes": limit,
        "i_prompt_tokens": i_prompt,
        "i_kv_bytes": i_kv,
        "mlx_args": "mlx_lm.server " + " ".join(mlx_args),
        "gateway_env": ", ".join(f"`{k}={v}`" for k, v in base_env.items())
        + f"; for (i) `MLXM_MEMORY_LIMIT={limit}` (and `MLXM_MEMORY_LIMIT_BYTES`), "
        f"`MLXM_QUEUE_TIMEOUT={mem_env['MLXM_QUEUE_TIMEOUT']}` and `MLXM_PROMPT_CACHE_BYTES={i_cache}` "
        "(mlx_lm.server's `--prompt-cache-bytes` the same)",
        "runs": args.runs,
        "quick": args.quick,
        "errors": errors,
        "notes": NOTES,
        "wall_min": (time.monotonic() - t_start) / 60,
    }
    meta.update(describe(sizes, meta))
    raw["meta"] = meta
    json_path = args.json or base_dir / "team-results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(raw, indent=1, default=str))
    report = render_report(summarize(raw), meta)
    print("\n" + report)
    log(f"raw results: {json_path}")
    if args.write is not None:
        doc = args.write if args.write.is_absolute() else ROOT / args.write
        write_section(doc, SECTION_TITLE, report)
        log(f"wrote the section '{SECTION_TITLE[3:]}' in {doc}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
