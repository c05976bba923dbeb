"""Helpers shared by the benchmark scripts.

Pure functions (statistics, Markdown, section replacement) are unit-tested in
tests/benchmarks/. The process helpers start the real product (`tests.conftest.start_gateway`),
mlx-lm's own `mlx_lm.server` and in-process baselines; nothing here imports MLX, which only
ever runs in child processes (after `inference.worker.blas.preload_blas()`, like the worker).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DOC_INTRO = (
    "# Benchmarks\n\n"
    "All figures are ratios against a baseline run in the same invocation; these machines are noisy.\n"
)
# Spread (max - min) / median above this marks a series as noisy in the report.
NOISY_SPREAD = 0.15


# --------------------------------------------------------------------------------------
# Pure helpers (unit-tested)
# --------------------------------------------------------------------------------------


def decode_rate(tokens: int, t_first: float | None, t_last: float | None) -> float:
    """Decode tokens/s after the first token: (tokens - 1) / (t_last - t_first); NaN if undefined."""
    if tokens < 2 or t_first is None or t_last is None or t_last <= t_first:
        return math.nan
    return (tokens - 1) / (t_last - t_first)


def finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def median(values: Sequence[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    vals = finite(values)
    return statistics.median(vals) if vals else math.nan


def spread(values: Sequence[float]) -> float:
    """(max - min) / median of the finite values: 0 for one value, NaN for none."""
    vals = finite(values)
    mid = median(vals)
    if not vals or not mid:
        return math.nan
    return (max(vals) - min(vals)) / mid


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of the finite values, linearly interpolated between the
    closest ranks (numpy's default method); NaN when there are none."""
    vals = sorted(finite(values))
    if not vals:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = (len(vals) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def safe_ratio(num: float, den: float) -> float:
    """num / den, NaN when either is NaN or den is 0."""
    if math.isnan(num) or math.isnan(den) or den == 0:
        return math.nan
    return num / den


def paired_ratio(pairs: Sequence[tuple[float, float]]) -> float:
    """Median of per-run ratios ours/baseline: cancels slow drifts in machine load better than
    a ratio of medians."""
    return median([safe_ratio(a, b) for a, b in pairs])


def gaps_in_window(times: Sequence[float], start: float, end: float) -> list[float]:
    """Inter-arrival gaps of one stream's chunks that overlap the window [start, end].

    A gap between consecutive arrivals t[i] < t[i+1] counts when t[i+1] > start and
    t[i] < end: a stall that spans the whole window is one large gap, and the gap that the
    window's end interrupts is counted in full (it is what the stream's reader waited)."""
    ts = sorted(times)
    return [b - a for a, b in zip(ts, ts[1:], strict=False) if b > start and a < end]


def fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return pattern.format(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; every row must have as many cells as the header."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells, header has {len(header)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(markdown: str, title: str, body: str) -> str:
    """Replace the section headed `title` (up to the next heading of the same or higher
    level) with `title` + `body`, or append it at the end when absent."""
    level = len(title) - len(title.lstrip("#"))
    section = f"{title}\n\n{body.strip()}\n"
    lines = markdown.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        head = markdown.rstrip("\n")
        return (head + "\n\n" if head else "") + section
    end = len(lines)
    in_fence = False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            in_fence = not in_fence
        if in_fence:
            continue
        stripped = lines[i].lstrip("#")
        hashes = len(lines[i]) - len(stripped)
        if 0 < hashes <= level and stripped.startswith(" "):
            end = i
            break
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def write_section(path: Path, title: str, body: str) -> None:
    text = path.read_text() if path.exists() else DOC_INTRO
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, title, body))


# --------------------------------------------------------------------------------------
# The machine and the command (for reports)
# --------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (math.nan, math.nan, math.nan)


def fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def command_line(script: str | Path, argv: Sequence[str]) -> str:
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(ROOT)) if exe.is_absolute() else str(exe)
    except ValueError:
        exe_s = "python"
    script_path = Path(script).resolve()
    with contextlib.suppress(ValueError):
        script_path = script_path.relative_to(ROOT)
    env = f"MLXM_DATA_DIR={os.environ['MLXM_DATA_DIR']} " if "MLXM_DATA_DIR" in os.environ else ""
    return f"{env}{exe_s} {script_path} {shlex.join(argv)}".rstrip()


def default_openblas_threads() -> str:
    """What `preload_blas` gives MLX unless the environment says otherwise."""
    return os.environ.get("OPENBLAS_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) - 1))


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def prepare_models(shared_dir: Path) -> dict[str, Path]:
    """Build the demo models in a subprocess: building imports MLX, which must stay out of here."""
    code = (
        "import json, sys; from pathlib import Path; "
        "from inference.worker.testmodels.build import prepare_demo_models; "
        "paths = prepare_demo_models(Path(sys.argv[1]), log=lambda m: print(m, file=sys.stderr)); "
        "print(json.dumps({k: str(v) for k, v in paths.items()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(shared_dir)], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"could not build the demo models:\n{out.stderr[-3000:]}")
    return {k: Path(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


READY = ".bench-ready"


def ensure_dequantized(src: Path, dst: Path) -> Path:
    """A float32 copy of a quantized model, made once with mlx-lm's own converter
    (`mlx_lm convert --dequantize`) and cached at `dst`."""
    if (dst / READY).exists():
        return dst
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(src), "--mlx-path", str(tmp),
           "--dequantize"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"mlx_lm convert --dequantize failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    (tmp / READY).write_text(" ".join(cmd) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return dst


def ensure_context_copy(src: Path, dst: Path, context: int) -> Path:
    """A copy of a small model whose config declares a longer context (`max_position_embeddings`);
    the weights are unchanged (RoPE has no table to outgrow). Cached at `dst`."""
    if (dst / READY).exists():
        return dst
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    config = json.loads((tmp / "config.json").read_text())
    config["max_position_embeddings"] = context
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / READY).write_text(f"copy of {src} with max_position_embeddings={context}\n")
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return dst


def text_tokens(model_dir: Path, text: str) -> int:
    """Token count of raw text with the model's own tokenizer (the `tokenizers` library: no MLX)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return len(tok.encode(text, add_special_tokens=False).ids)


# --------------------------------------------------------------------------------------
# Servers: the gateway (the real product) and mlx_lm.server
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def patched_environ(overrides: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_gateway_env(data_dir: Path, models: dict[str, Path], env: Mapping[str, str] | None = None) -> Any:
    """`tests.conftest.start_gateway` (manage.py serve: web server + worker) with extra environment
    for both processes (e.g. MLXM_BLAS=reference)."""
    from tests.conftest import start_gateway

    with patched_environ(env or {}):
        return start_gateway(data_dir, models, stream_interval_ms=None)


def register_profile(gw: Any, name: str, model_path: Path, description: str) -> None:
    """Create a profile in a running gateway's database through the product's own service
    (`profile_create`), with the environment `start_gateway` gave it."""
    from tests.conftest import manage

    env = {**os.environ, "MLXM_DATA_DIR": str(gw.data_dir), "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}
    env.pop("DATABASE_URL", None)
    code = (
        "from mlxmanager.profiles.models import Profile\n"
        "from mlxmanager.profiles.services import profile_create\n"
        f"if not Profile.objects.filter(name={name!r}).exists():\n"
        f"    profile_create(name={name!r}, model_path={str(model_path)!r}, description={description!r})\n"
    )
    manage("shell", "-c", code, env=env)


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# mlx_lm.server, with the worker's BLAS preloaded before MLX initialises.
_MLX_SERVER_CODE = (
    "import sys; from inference.worker.blas import preload_blas; preload_blas(); "
    "sys.argv[0] = 'mlx_lm.server'; from mlx_lm.server import main; main()"
)


@dataclass
class MlxServer:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def stop(self) -> None:
        stop_process_group(self.proc)


def start_mlx_server(
    model_dir: Path, log_dir: Path, args: Sequence[str], env: Mapping[str, str] | None = None
) -> MlxServer:
    import httpx

    from tests.conftest import free_port

    port = free_port()
    argv = ["--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING",
            *args]  # fmt: skip
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"mlx_lm.server-{model_dir.name}-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", _MLX_SERVER_CODE, *argv],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = MlxServer(url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path, args=argv)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlx_lm.server exited:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                return server
        time.sleep(0.3)
    server.stop()
    raise TimeoutError(f"mlx_lm.server did not come up:\n{log_path.read_text()[-3000:]}")


# --------------------------------------------------------------------------------------
# One streamed chat completion, timed chunk by chunk (openai SDK, async)
# --------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """One streamed request as its client saw it (perf_counter seconds)."""

    t_send: float = math.nan
    t_first: float | None = None  # first chunk carrying content
    chunk_times: list[float] = field(default_factory=list)  # every chunk carrying content
    t_last: float | None = None  # last content chunk, or the chunk with finish_reason
    t_end: float = math.nan
    tokens: int = 0  # usage.completion_tokens
    prompt_tokens: int = 0
    cached_tokens: int | None = None
    text: str = ""
    finish_reason: str | None = None
    closed_early: bool = False

    @property
    def ttft(self) -> float:
        return math.nan if self.t_first is None else self.t_first - self.t_send

    @property
    def decode_tps(self) -> float:
        return decode_rate(self.tokens, self.t_first, self.t_last)


async def stream_chat(
    client: Any,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    rec: StreamResult | None = None,
    stop: Any = None,
) -> StreamResult:
    """Stream one greedy chat completion, recording chunk arrival times into `rec`.

    `stop` (an asyncio.Event): once set, the stream is closed at its next chunk, which
    aborts the request on the server (both servers stop generating on disconnect)."""
    rec = rec if rec is not None else StreamResult()
    parts: list[str] = []
    rec.t_send = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    try:
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                rec.tokens = int(chunk.usage.completion_tokens)
                rec.prompt_tokens = int(chunk.usage.prompt_tokens)
                details = getattr(chunk.usage, "prompt_tokens_details", None)
                cached = getattr(details, "cached_tokens", None)
                rec.cached_tokens = None if cached is None else int(cached)
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    if rec.t_first is None:
                        rec.t_first = now
                    rec.chunk_times.append(now)
                    rec.t_last = now
                if choice.finish_reason is not None:
                    rec.finish_reason = choice.finish_reason
                    rec.t_last = now
            if stop is not None and stop.is_set() and rec.finish_reason is None:
                rec.closed_early = True
                break
    finally:
        await stream.close()
        rec.t_end = time.perf_counter()
        rec.text = "".join(parts)
    if rec.closed_early:
        rec.tokens = len(rec.chunk_times)  # no usage on an aborted stream: chunks seen
    return rec
