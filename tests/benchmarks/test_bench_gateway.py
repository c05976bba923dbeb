"""The benchmark script's pure helpers (no processes, no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gateway.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gateway", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gateway"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_helpers_median_rate_table_and_section_replacement() -> None:
    bench = _load()

    assert bench.median([3.0, 1.0, 2.0]) == 2.0
    assert bench.median([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(bench.median([]))
    assert bench.decode_rate(11, 1.0, 2.0) == 10.0
    assert math.isnan(bench.decode_rate(1, 1.0, 2.0))
    assert math.isnan(bench.decode_rate(5, 2.0, 2.0))

    row = bench.Row(model="tiny-random", max_tokens=256, baseline_tokens=256, gateway_tokens=255,
                    baseline_tps=500.0, baseline_mlx_tps=510.0, gateway_tps=400.0, ratio=0.8,
                    gateway_ttft_s=0.0123)  # fmt: skip
    table = bench.format_table([row]).splitlines()
    assert len(table) == 3
    assert table[0].count("|") == table[1].count("|") == table[2].count("|")
    assert table[2] == "| tiny-random | 256 | 256 / 255 | 500.0 | 510.0 | 400.0 | 0.80 | 12 ms |"

    title = bench.SECTION_TITLE
    fresh = bench.replace_section(bench.DOC_INTRO, title, "first")
    assert fresh.startswith(bench.DOC_INTRO.rstrip("\n") + "\n\n" + title + "\n\nfirst\n")
    doc = fresh + "\n## Later section\n\nkeep me\n"
    updated = bench.replace_section(doc, title, "second\n\n### detail\n\nmore")
    assert "first" not in updated
    assert updated.count(title) == 1
    assert "second\n\n### detail\n\nmore\n\n## Later section\n\nkeep me\n" in updated
    assert bench.replace_section(updated, title, "second\n\n### detail\n\nmore") == updated
