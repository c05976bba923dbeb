"""Single-stream decode speed: the live gateway against in-process mlx-lm, in one invocation.

For each model the script alternates two measurements `--runs` times (A B A B ...):

A. Baseline: a fresh subprocess (this script with `--baseline`) preloads the same BLAS as
   the inference worker, loads the model with `mlx_lm.load`, warms up with a short
   generation, then runs `mlx_lm.stream_generate` greedily on the chat-templated prompt.
   It reports mlx-lm's own `generation_tps` and the wall-clock decode rate
   (tokens - 1) / (time of last token - time of first token).
B. Gateway: the real product (`manage.py serve`: uvicorn + inference worker, started with
   `tests.conftest.start_gateway`) is asked for the same prompt through the official
   `openai` SDK (`stream=True`, temperature 0, same max_tokens, usage in the last chunk).
   Decode rate = (completion tokens - 1) / (time of last chunk - time of first content
   chunk); TTFT = time of first content chunk - time the request was sent.

The gateway is started once and warmed up (one request per model loads it); the baseline
runs in its own process so MLX never shares a process, or CPU time, with the gateway's
client. Medians are reported, and the ratio column is the median of the per-pair ratios
(each gateway run over the baseline run just before it), which cancels slow drifts in
machine load better than a ratio of medians.

    python benchmarks/bench_gateway.py [--models tiny-random,smollm2-135m-instruct]
        [--max-tokens N] [--runs 3] [--write docs/benchmarks.md]

MLXM_DATA_DIR (default .data/bench) holds the demo models (under shared/) and a
throwaway gateway data dir. No timing here is asserted anywhere: these are measurements.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    DOC_INTRO,
    NOISY_SPREAD,
    ROOT,
    cpu_model,
    decode_rate,
    median,
    prepare_models,
    replace_section,
    spread,
    utc_now,
    write_section,
)
from benchmarks._common import command_line as _command_line  # noqa: E402
from benchmarks._common import fmt as _fmt  # noqa: E402
from benchmarks._common import version as _version  # noqa: E402

__all__ = ["DOC_INTRO", "decode_rate", "median", "replace_section", "spread"]

SECTION_TITLE = "## Single-stream decode: gateway vs in-process"
PROMPT = "Write a long story about a dragon."
DEFAULT_MODELS = ("tiny-random", "smollm2-135m-instruct")
# smollm2 decodes at a few tok/s on a 2-core CPU: keep its runs short.
DEFAULT_MAX_TOKENS = {"tiny-random": 256, "smollm2-135m-instruct": 64}
FALLBACK_MAX_TOKENS = 64
WARMUP_TOKENS = 16


# --------------------------------------------------------------------------------------
# Pure helpers (unit-tested)
# --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One model's medians over all runs."""

    model: str
    max_tokens: int
    baseline_tokens: int
    gateway_tokens: int
    baseline_tps: float
    baseline_mlx_tps: float
    gateway_tps: float
    ratio: float
    gateway_ttft_s: float


TABLE_HEADER = (
    "| model | max_tokens | tokens (in-process / gateway) | in-process tok/s | "
    "in-process tok/s (mlx-lm generation_tps) | gateway tok/s | ratio (gateway / in-process) | gateway TTFT |"
)


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of the per-model medians."""
    lines = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    for r in rows:
        cells = [
            r.model,
            str(r.max_tokens),
            f"{r.baseline_tokens} / {r.gateway_tokens}",
            _fmt(r.baseline_tps, "{:.1f}"),
            _fmt(r.baseline_mlx_tps, "{:.1f}"),
            _fmt(r.gateway_tps, "{:.1f}"),
            _fmt(r.ratio, "{:.2f}"),
            _fmt(r.gateway_ttft_s * 1000, "{:.0f} ms"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One generation, from either side."""

    tokens: int
    decode_tps: float
    ttft_s: float
    prompt_tokens: int
    text_sha: str
    mlx_tps: float = math.nan
    cached_tokens: int = 0
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT}]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def baseline_main(model_dir: str, max_tokens: int) -> None:
    """`--baseline` mode: runs in its own process, prints one JSON Sample on stdout."""
    from inference.worker.blas import active_blas, preload_blas

    preload_blas()  # before MLX, exactly as the inference worker does
    from mlx_lm import load, stream_generate

    loaded = load(model_dir)
    model, tokenizer = loaded[0], loaded[1]
    prompt = list(tokenizer.apply_chat_template(_messages(), add_generation_prompt=True))
    for _ in stream_generate(model, tokenizer, prompt, max_tokens=WARMUP_TOKENS):
        pass

    parts: list[str] = []
    t_first: float | None = None
    t_last: float | None = None
    last: Any = None
    t0 = time.perf_counter()
    for resp in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
        now = time.perf_counter()
        if t_first is None:
            t_first = now
        t_last = now
        parts.append(resp.text)
        last = resp
    assert last is not None and t_first is not None
    sample = Sample(
        tokens=int(last.generation_tokens),
        decode_tps=decode_rate(int(last.generation_tokens), t_first, t_last),
        ttft_s=t_first - t0,
        prompt_tokens=len(prompt),
        text_sha=_sha("".join(parts)),
        mlx_tps=float(last.generation_tps),
        finish_reason=last.finish_reason,
        extra={"blas": active_blas(), "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "")},
    )
    print(json.dumps(asdict(sample)))


def run_baseline(model_dir: Path, max_tokens: int) -> Sample:
    """Run `baseline_main` in a fresh interpreter (MLX must not share our process)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--baseline", str(model_dir),
           "--max-tokens", str(max_tokens)]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"baseline failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return Sample(**json.loads(out.stdout.strip().splitlines()[-1]))


def run_gateway(client: Any, model: str, max_tokens: int) -> Sample:
    """Stream one chat completion through the OpenAI SDK and time its chunks."""
    parts: list[str] = []
    t_first: float | None = None
    t_last: float | None = None
    usage: Any = None
    finish: str | None = None
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=_messages(),
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
                if t_first is None:
                    t_first = now
                t_last = now
            if choice.finish_reason is not None:
                finish = choice.finish_reason
                t_last = now
    if usage is None or t_first is None:
        raise RuntimeError(f"gateway stream for {model} had no usage or no content")
    details = getattr(usage, "prompt_tokens_details", None)
    return Sample(
        tokens=int(usage.completion_tokens),
        decode_tps=decode_rate(int(usage.completion_tokens), t_first, t_last),
        ttft_s=t_first - t0,
        prompt_tokens=int(usage.prompt_tokens),
        text_sha=_sha("".join(parts)),
        cached_tokens=int(getattr(details, "cached_tokens", 0) or 0),
        finish_reason=finish,
    )


def summarize(model: str, max_tokens: int, pairs: Sequence[tuple[Sample, Sample]]) -> Row:
    base = [a for a, _ in pairs]
    gw = [b for _, b in pairs]
    return Row(
        model=model,
        max_tokens=max_tokens,
        baseline_tokens=round(median([s.tokens for s in base])),
        gateway_tokens=round(median([s.tokens for s in gw])),
        baseline_tps=median([s.decode_tps for s in base]),
        baseline_mlx_tps=median([s.mlx_tps for s in base]),
        gateway_tps=median([s.decode_tps for s in gw]),
        ratio=median([b.decode_tps / a.decode_tps for a, b in pairs]),
        gateway_ttft_s=median([s.ttft_s for s in gw]),
    )


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def command_line(argv: Sequence[str]) -> str:
    return _command_line(__file__, argv)


def _series(values: Sequence[float], pattern: str = "{:.1f}") -> str:
    return ", ".join(_fmt(v, pattern) for v in values)


def report_body(
    argv: Sequence[str],
    rows: Sequence[Row],
    results: dict[str, list[tuple[Sample, Sample]]],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    first = next(iter(results.values()))[0][0]
    now = utc_now()
    lines = [
        f"Command: `{command_line(argv)}`",
        "",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}",
        f"- Date: {now}",
        f"- mlx {_version('mlx')}, mlx-lm {_version('mlx-lm')}, Python {platform.python_version()}",
        f"- BLAS: {first.extra.get('blas', '?')} (OPENBLAS_NUM_THREADS={first.extra.get('openblas_threads') or 'unset'}),"
        " preloaded by `inference.worker.blas.preload_blas()` in both the worker and the baseline process",
        f"- Load average (1/5/15 min): before {'/'.join(f'{x:.2f}' for x in load_before)},"
        f" after {'/'.join(f'{x:.2f}' for x in load_after)}",
        f'- Prompt: chat template applied to "{PROMPT}", greedy (temperature 0), one stream at a time;'
        " decode tok/s = (tokens - 1) / (last token time - first token time), on both sides",
        "",
        format_table(rows),
        "",
        "Per run (alternating in-process, gateway):",
        "",
    ]
    noisy: list[str] = []
    for model, pairs in results.items():
        base = [a.decode_tps for a, _ in pairs]
        gw = [b.decode_tps for _, b in pairs]
        ttft = [b.ttft_s * 1000 for _, b in pairs]
        same = all(a.text_sha == b.text_sha for a, b in pairs)
        cached = sorted({b.cached_tokens for _, b in pairs})
        prompt_tokens = sorted({a.prompt_tokens for a, _ in pairs} | {b.prompt_tokens for _, b in pairs})
        lines.append(
            f"- {model}: in-process tok/s {_series(base)}; gateway tok/s {_series(gw)}; "
            f"gateway TTFT ms {_series(ttft, '{:.0f}')}; prompt tokens {'/'.join(map(str, prompt_tokens))}"
            f" (gateway prompt-cache hits: {'/'.join(map(str, cached))} tokens); "
            f"identical greedy output: {'yes' if same else 'no'}"
        )
        for label, series in (("in-process", base), ("gateway", gw)):
            if spread(series) > NOISY_SPREAD:
                noisy.append(f"{model} {label} ({spread(series):.0%})")
    lines += [
        "",
        "Notes: TTFT is measured after a warm-up request per model, so the model is loaded and the"
        " gateway's prompt cache holds this prompt (TTFT is request overhead plus one-token prefill)."
        " The ratio is the median of per-pair ratios.",
    ]
    if noisy:
        lines += [
            "",
            f"Large run-to-run variance (max-min over median > {NOISY_SPREAD:.0%}): {', '.join(noisy)}."
            " The machine was shared with other jobs (see the load average); read the ratio, not the"
            " absolute rates.",
        ]
    return "\n".join(lines)


def write_report(path: Path, body: str) -> None:
    write_section(path, SECTION_TITLE, body)


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated demo model names")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="tokens per generation (default: 256 tiny-random, 64 smollm2)",
    )
    parser.add_argument("--runs", type=int, default=3, help="alternating baseline/gateway pairs per model")
    parser.add_argument("--write", type=Path, default=None, help="update this Markdown file's section")
    parser.add_argument("--baseline", metavar="MODEL_DIR", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.baseline:
        baseline_main(args.baseline, args.max_tokens or FALLBACK_MAX_TOKENS)
        return 0

    os.environ.setdefault("MLXM_DATA_DIR", str(ROOT / ".data" / "bench"))
    from tests.conftest import _shared_dir, start_gateway, stop_gateway

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"building/locating demo models under {_shared_dir()} ...", flush=True)
    paths = prepare_models(_shared_dir())
    unknown = [m for m in models if m not in paths]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(paths)}")
    budget = {m: args.max_tokens or DEFAULT_MAX_TOKENS.get(m, FALLBACK_MAX_TOKENS) for m in models}

    base_dir = Path(os.environ["MLXM_DATA_DIR"]).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    gw_dir = Path(tempfile.mkdtemp(prefix="gateway-", dir=base_dir))
    load_before = os.getloadavg()
    print("starting the gateway ...", flush=True)
    gw = start_gateway(gw_dir, paths, stream_interval_ms=None)
    results: dict[str, list[tuple[Sample, Sample]]] = {}
    try:
        client = gw.openai()
        for model in models:
            print(f"{model}: warm-up (model load) ...", flush=True)
            run_gateway(client, model, WARMUP_TOKENS)
        for model in models:
            pairs: list[tuple[Sample, Sample]] = []
            for i in range(args.runs):
                a = run_baseline(paths[model], budget[model])
                b = run_gateway(client, model, budget[model])
                pairs.append((a, b))
                print(
                    f"{model} run {i + 1}/{args.runs}: in-process {a.decode_tps:.1f} tok/s "
                    f"({a.tokens} tok, mlx-lm {a.mlx_tps:.1f}), gateway {b.decode_tps:.1f} tok/s "
                    f"({b.tokens} tok, TTFT {b.ttft_s * 1000:.0f} ms)",
                    flush=True,
                )
            results[model] = pairs
    finally:
        stop_gateway(gw)
        shutil.rmtree(gw_dir, ignore_errors=True)
    load_after = os.getloadavg()

    rows = [summarize(m, budget[m], results[m]) for m in models]
    print()
    print(format_table(rows))
    if args.write is not None:
        path = args.write if args.write.is_absolute() else ROOT / args.write
        write_report(path, report_body(argv, rows, results, load_before, load_after))
        print(f"\nwrote the section '{SECTION_TITLE[3:]}' in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
