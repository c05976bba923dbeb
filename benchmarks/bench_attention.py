"""Decode steps with the worker's CPU attention (`inference/worker/cpu_attention.py`) against
mlx-lm's own, in one process, alternating.

For each case (rows x cached tokens) every row's prompt is prefilled once; each run then
inserts copies of those KV caches into a fresh mlx-lm `BatchGenerator` (what the worker does
with a prompt-cache hit) and times `--steps` greedy decode steps, the model's attention being
mlx-lm's `scaled_dot_product_attention` (A) or `cpu_attention.attention` (B). Runs alternate
A B A B ...; the ratio is the median of per-pair ratios of the median step time, and the
tokens of both must be the same.

    python benchmarks/bench_attention.py [--cases 1:1650,5:1650,8:1650,8:200,1:6000]
        [--runs 3] [--steps 24] [--write docs/benchmarks.md]

No timing here is asserted anywhere: these are measurements.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    ROOT,
    command_line,
    cpu_model,
    ensure_dequantized,
    fmt_load,
    loadavg,
    md_table,
    median,
    paired_ratio,
    prepare_models,
    utc_now,
    version,
    write_section,
)

TITLE = "## Decode attention on the CPU: worker vs mlx-lm"
MODEL = "smollm2-135m-instruct"


def run_case(model: Any, rows: int, length: int, runs: int, steps: int) -> dict[str, Any]:
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.models import base
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    from inference.worker import cpu_attention

    module = sys.modules[type(model).__module__]
    rng = random.Random(rows * 10_000 + length)
    prompts = [[rng.randrange(100, 40_000) for _ in range(length + 7 * i)] for i in range(rows)]
    prefilled = []
    for prompt in prompts:
        cache = make_prompt_cache(model)
        for i in range(0, len(prompt) - 1, 512):
            model(mx.array([prompt[i : min(i + 512, len(prompt) - 1)]]), cache=cache)
            mx.eval([c.state for c in cache])
        prefilled.append([c.state for c in cache])

    def one(attention: Any) -> tuple[float, list[list[int]]]:
        module.scaled_dot_product_attention = attention
        caches = []
        for states in prefilled:
            layers = []
            for state in states:
                c = KVCache()
                c.state = state  # grows into new buffers: the prefilled arrays stay as they are
                layers.append(c)
            caches.append(layers)
        batch = BatchGenerator(model, completion_batch_size=rows, prefill_batch_size=rows)
        batch.insert(
            [p[-1:] for p in prompts],
            max_tokens=[steps + 8] * rows,
            caches=caches,
            all_tokens=[p[:-1] for p in prompts],
        )
        times: list[float] = []
        tokens: list[list[int]] = []
        try:
            while len(times) < steps:
                t0 = time.perf_counter()
                _, responses = batch.next()
                if responses:
                    times.append(time.perf_counter() - t0)
                    tokens.append([r.token for r in responses])
        finally:
            batch.close()
            module.scaled_dot_product_attention = base.scaled_dot_product_attention
        return median(times[3:]), tokens

    series: dict[str, list[float]] = {"A": [], "B": []}
    same = True
    for run in range(runs):
        order = [("A", base.scaled_dot_product_attention), ("B", cpu_attention.attention)]
        got = {}
        for name, attention in order if run % 2 == 0 else order[::-1]:
            step, got[name] = one(attention)
            series[name].append(step)
        same = same and got["A"] == got["B"]
        print(
            f"{rows} rows x {length} tokens, run {run + 1}: mlx-lm {series['A'][-1] * 1000:.1f} ms, "
            f"worker {series['B'][-1] * 1000:.1f} ms",
            file=sys.stderr,
            flush=True,
        )
    return {
        "rows": rows,
        "length": length,
        "a": median(series["A"]),
        "b": median(series["B"]),
        "ratio": paired_ratio(list(zip(series["B"], series["A"], strict=True))),
        "same": same,
        "runs": series,
    }


def report(results: Sequence[dict[str, Any]], meta: dict[str, str]) -> str:
    rows = [
        [
            str(r["rows"]),
            f"{r['length']:,}",
            f"{r['a'] * 1000:.1f}",
            f"{r['b'] * 1000:.1f}",
            f"{r['ratio']:.2f}×",
            "yes" if r["same"] else "**no**",
        ]
        for r in results
    ]
    header = [
        "rows",
        "cached tokens (row 1)",
        "mlx-lm step ms",
        "worker step ms",
        "worker / mlx-lm",
        "same tokens",
    ]
    per_run = [
        f"- {r['rows']} x {r['length']}: mlx-lm "
        + ", ".join(f"{x * 1000:.1f}" for x in r["runs"]["A"])
        + " ms; worker "
        + ", ".join(f"{x * 1000:.1f}" for x in r["runs"]["B"])
        + " ms"
        for r in results
    ]
    return "\n".join(
        [
            f"Command: `{meta['command']}`",
            "",
            f"- Machine: {meta['machine']}",
            f"- Date: {meta['date']}; load average (1/5/15 min) before {meta['load0']}, after {meta['load1']}",
            f"- mlx {version('mlx')}, mlx-lm {version('mlx-lm')}, Python {platform.python_version()}; "
            f"BLAS: OpenBLAS preloaded by `inference.worker.blas.preload_blas()` "
            f"(OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '?')})",
            f"- Model: {meta['model']} (float32; 9 query heads on 3 KV heads, 30 layers). Each row's "
            "prompt is prefilled once; each run inserts its KV caches into a fresh `BatchGenerator` "
            "and times greedy decode steps (median after 3), rows i having 7*i more tokens than row 1. "
            "A: mlx-lm's `scaled_dot_product_attention` (`mx.fast.scaled_dot_product_attention`); "
            "B: the worker's `cpu_attention.attention`. Ratio: median of per-run ratios.",
            "",
            md_table(header, rows),
            "",
            "Per run (alternating):",
            "",
            *per_run,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="1:1650,5:1650,8:1650,8:200,1:6000", help="rows:tokens,...")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--write", type=Path, help="update this Markdown file's section")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLXM_DATA_DIR", str(ROOT / ".data" / "bench"))
    from tests.conftest import _shared_dir

    base_dir = Path(os.environ["MLXM_DATA_DIR"]).resolve()
    paths = prepare_models(_shared_dir())
    model_dir = ensure_dequantized(paths[MODEL], base_dir / "bench-models" / f"{MODEL}-f32")

    from inference.worker.blas import preload_blas

    preload_blas()
    from mlx_lm import load

    model = load(str(model_dir))[0]
    load0 = loadavg()
    cases = [tuple(int(x) for x in c.split(":")) for c in args.cases.split(",") if c.strip()]
    results = [run_case(model, rows, length, args.runs, args.steps) for rows, length in cases]
    meta = {
        "command": command_line(__file__, sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}",
        "date": utc_now(),
        "load0": fmt_load(load0),
        "load1": fmt_load(loadavg()),
        "model": f"SmolLM2-135M-Instruct ({model_dir.name})",
    }
    body = report(results, meta)
    print(body)
    if args.write:
        write_section(args.write, TITLE, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
