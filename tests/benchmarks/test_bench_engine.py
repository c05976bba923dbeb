"""The engine benchmark's pure helpers: statistics, gaps, summaries, Markdown, the SVG chart.

No processes, no models and no timing assertions: the numbers below are synthetic.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from benchmarks import _common as common
from benchmarks import bench_engine as bench


def test_percentile_interpolates_like_numpy_and_ignores_nan() -> None:
    assert common.percentile([1, 2, 3, 4, 5], 50) == 3
    assert common.percentile([1, 2, 3, 4], 50) == 2.5
    assert common.percentile([10, 20, 30, 40, 50], 95) == pytest.approx(48.0)
    assert common.percentile([5.0], 95) == 5.0
    assert common.percentile([3.0, math.nan, 1.0], 100) == 3.0
    assert common.percentile([3.0, 1.0], 0) == 1.0
    assert math.isnan(common.percentile([], 50))
    assert math.isnan(common.percentile([math.nan], 50))
    with pytest.raises(ValueError):
        common.percentile([1.0], 101)


def test_ratios() -> None:
    assert common.safe_ratio(3.0, 2.0) == 1.5
    assert math.isnan(common.safe_ratio(1.0, 0.0))
    assert math.isnan(common.safe_ratio(math.nan, 1.0))
    # Median of per-run ratios, not a ratio of medians.
    assert common.paired_ratio([(2.0, 1.0), (3.0, 1.0), (10.0, 10.0)]) == 2.0
    assert math.isnan(common.paired_ratio([]))


def test_gaps_in_window_counts_gaps_overlapping_the_window() -> None:
    times = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
    # Window [3, 9] sits inside the stall 2 -> 10: one gap of 8 s.
    assert common.gaps_in_window(times, 3.0, 9.0) == [8.0]
    # Window [1.5, 10.5]: the gap 1 -> 2 ends inside it, 2 -> 10 spans it, 10 -> 11 starts inside it.
    assert common.gaps_in_window(times, 1.5, 10.5) == [1.0, 8.0, 1.0]
    # Unsorted input is fine; nothing overlaps a window after the last arrival.
    assert common.gaps_in_window([2.0, 0.0, 1.0], 0.5, 0.6) == [1.0]
    assert common.gaps_in_window(times, 13.0, 14.0) == []
    assert common.gaps_in_window([1.0], 0.0, 2.0) == []


def test_decode_rate_and_stream_result() -> None:
    rec = common.StreamResult(t_send=0.0, t_first=0.5, t_last=1.5, tokens=11)
    assert rec.ttft == 0.5
    assert rec.decode_tps == 10.0
    assert math.isnan(common.StreamResult().ttft)


def test_md_table_and_section_replacement() -> None:
    table = common.md_table(["a", "b"], [["1", "x|y"]]).splitlines()
    assert table == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]
    with pytest.raises(ValueError):
        common.md_table(["a"], [["1", "2"]])

    title = bench.SECTION_TITLE
    doc = common.DOC_INTRO + "\n## Single-stream decode: gateway vs in-process\n\nkeep me\n"
    once = common.replace_section(doc, title, "first\n\n### sub\n\n```\n## not a heading\n```\n")
    assert "keep me" in once and once.count(title) == 1
    twice = common.replace_section(once + "\n## Later\n\nalso kept\n", title, "second")
    assert "first" not in twice and "## not a heading" not in twice
    assert "second\n\n## Later\n\nalso kept\n" in twice
    assert "keep me" in twice


def _b_run(agg: float, ttft: float, decode: float = math.nan) -> dict[str, Any]:
    return {"agg_tps": agg, "ttft_p50": ttft, "ttft_p95": ttft * 2, "decode_tps": decode}


def _raw() -> dict[str, Any]:
    def b(gw: float, mlx: float, inp: float) -> dict[str, Any]:
        return {
            "levels": [1, 8],
            "max_tokens": 64,
            "runs": {
                bench.GW: [{"1": _b_run(gw, 0.1, gw), "8": _b_run(gw * 4, 0.2)} for _ in range(3)],
                bench.MLX: [{"1": _b_run(mlx, 0.1, mlx), "8": _b_run(mlx * 4, 0.3)} for _ in range(3)],
                bench.INP: [
                    {"1": {"agg_tps": inp, "decode_tps": inp, "ttft": 0.05}, "8": {"agg_tps": inp * 4}}
                    for _ in range(3)
                ],
            },
        }

    def c(total_gw: float, total_mlx: float) -> dict[str, Any]:
        run = {"cold_ttft": 10.0, "cached_ttft_p50": 0.2, "cached_ttft_p95": 0.4, "first_turn_ttft_p50": 0.3,
               "later_turn_ttft_p50": 0.2, "cached_tokens_p50": 1500, "prompt_tokens_p50": 1550,
               "hit_fraction": 0.95, "cold_prompt_tokens": 1530, "completion_tokens": 640}  # fmt: skip
        return {
            "turn_tokens": 16,
            "runs": {
                bench.GW: [{**run, "total_s": total_gw}] * 3,
                bench.MLX: [{**run, "total_s": total_mlx}] * 3,
            },
        }

    def d(gap_gw: float, gap_mlx: float) -> dict[str, Any]:
        run = {"gap_p50": 0.1, "gap_max": 1.0, "stall_p50": 0.8, "steady_gap_p50": 0.05, "steady_gap_p95": 0.07, "long_ttft": 3.0,
               "long_prompt_tokens": 2010, "running_streams": 7}  # fmt: skip
        return {
            "runs": {bench.GW: [{**run, "gap_p95": gap_gw}] * 3, bench.MLX: [{**run, "gap_p95": gap_mlx}] * 3}
        }

    return {
        bench.TINY: {"b": b(500.0, 300.0, 600.0), "c": c(5.0, 10.0), "d": d(0.1, 1.0)},
        bench.F32_PROFILE: {"b": b(10.0, 10.0, 10.0), "c": c(9.0, 10.0), "d": d(0.9, 1.0)},
        "levers": [
            {
                "name": "BLAS",
                "model": bench.F32_PROFILE,
                "a": "reference",
                "b": "openblas",
                "tokens": 32,
                "runs": {"A": [{"decode_tps": 5.0}] * 3, "B": [{"decode_tps": 10.0}] * 3},
            },
        ],  # fmt: skip
    }


def test_summary_targets_and_report() -> None:
    summary = bench.summarize(_raw())
    tiny = summary[bench.TINY]["b"]["rows"]
    assert tiny[1]["decode_vs_mlx"] == pytest.approx(500 / 300)
    assert tiny[8]["agg_vs_inp"] == pytest.approx(500 / 600)
    assert tiny[8]["ttft_p95_vs_mlx"] == pytest.approx(0.4 / 0.6)
    assert summary[bench.TINY]["c"]["total_vs_mlx"] == 0.5
    assert summary[bench.TINY]["c"][bench.GW]["cached_vs_cold"] == pytest.approx(0.02)
    assert summary[bench.TINY]["d"]["gap_p95_vs_mlx"] == pytest.approx(0.1)
    assert summary["levers"][0]["b_vs_a"] == 2.0

    status = {(t.subject, t.label): t.met for t in bench.targets(summary)}
    assert status[(bench.TINY, "1-stream decode tok/s, ours / mlx_lm.server")] is True  # 1.67 >= 1.3
    assert status[(bench.TINY, "(c) multi-turn total time, ours / mlx_lm.server")] is True  # 0.5 <= 0.7
    assert status[(bench.F32_PROFILE, "(c) multi-turn total time, ours / mlx_lm.server")] is False  # 0.9
    assert (
        status[(bench.F32_PROFILE, "(d) p95 inter-token gap during a long prefill, ours / mlx_lm.server")]
        is False
    )
    assert bench.Target("x", "y", ">= 1.0", math.nan).met is None

    cfg = bench.Config()
    meta = {"command": "python benchmarks/bench_engine.py", "machine": "m", "date": "d", "versions": "v",
            "blas": "openblas", "load_start": "1/1/1", "load_end": "2/2/2", "mlx_args": "mlx_lm.server",
            "wall_min": 1.0, "servers": [bench.GW, bench.MLX, bench.INP]}  # fmt: skip
    report = bench.render_report(summary, meta, cfg, "benchmarks/aggregate.svg")
    assert "![aggregate tok/s by concurrent streams](benchmarks/aggregate.svg)" in report
    assert "### Targets" in report and "### (e) gateway vs in-process" in report
    assert "**met**" in report and "not met" in report
    # Every Markdown table row has the same number of cells as its header.
    for block in report.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({line.count(" | ") for line in rows if not line.startswith("|---")}) == 1, block
    # The section replaces itself and nothing else.
    doc = common.replace_section(common.DOC_INTRO, bench.SECTION_TITLE, report)
    assert common.replace_section(doc, bench.SECTION_TITLE, report) == doc


def test_svg_chart_is_well_formed() -> None:
    summary = bench.summarize(_raw())
    panels = bench.chart_panels(summary)
    assert [p[1] for p in panels] == [[1, 8], [1, 8]]
    svg = bench.svg_chart(panels, "Aggregate <tok/s> & more")
    root = ET.fromstring(svg)  # noqa: S314 (our own output)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert len(root.findall(f"{ns}polyline")) == 6  # 3 series x 2 panels
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "Aggregate <tok/s> & more" in texts
    assert "ours (gateway)" in texts
    # NaN points are skipped, not drawn.
    panels[0][2][bench.INP][0] = math.nan
    ET.fromstring(bench.svg_chart(panels, "t"))  # noqa: S314
    assert bench._nice_step(7.3) == 10 and bench._nice_step(0.23) == 0.25 and bench._nice_step(0) == 0


def test_merge_keeps_this_invocations_scenarios_and_labels_the_rest() -> None:
    earlier = _raw()
    earlier["meta"] = {"command": "old", "date": "d0", "load_range": "1-2"}
    now: dict[str, Any] = {bench.F32_PROFILE: {"b": {"levels": [1], "max_tokens": 8, "runs": {}}}, "meta": {}}
    now[bench.F32_PROFILE]["c"] = {"error": "boom"}
    bench.merge_raw(now, earlier)
    assert now[bench.F32_PROFILE]["b"]["max_tokens"] == 8  # not replaced
    assert now[bench.F32_PROFILE]["c"] is earlier[bench.F32_PROFILE]["c"]  # a failed one is
    assert now[bench.TINY] == earlier[bench.TINY]
    assert now["levers"] == earlier["levers"]
    assert any("tiny-random (b) from `old` (d0" in m for m in now["meta"]["merged"])
    # Merged again later, a result keeps naming the invocation that measured it.
    again: dict[str, Any] = {"meta": {}}
    bench.merge_raw(again, {**now, "meta": {"command": "newer", "date": "d1"}})
    assert any("tiny-random (b) from `old` (d0" in m for m in again["meta"]["merged"])
    assert not any("newer" in m and "tiny-random" in m for m in again["meta"]["merged"])
    # Files written before results carried their "source" name it only in their meta.
    older = {
        **earlier,
        "meta": {"command": "mid", "date": "d2", "merged": ["tiny-random (b) from `first` (d-1)"]},
    }
    for data in older.values():
        for value in data.values() if isinstance(data, dict) else ():
            if isinstance(value, dict):
                value.pop("source", None)
    third: dict[str, Any] = {"meta": {}}
    bench.merge_raw(third, older)
    assert "tiny-random (b) from `first` (d-1)" in third["meta"]["merged"]
    assert any(m.startswith(f"{bench.F32_PROFILE} (b) from `mid`") for m in third["meta"]["merged"])
    # A merged (b) brings its in-process runs: the (e) table is drawn from them.
    fourth: dict[str, Any] = {"meta": {"servers": [bench.GW, bench.MLX]}}
    bench.merge_raw(
        fourth, {**earlier, "meta": {"command": "c", "servers": [bench.GW, bench.MLX, bench.INP]}}
    )
    assert fourth["meta"]["servers"] == [bench.GW, bench.MLX, bench.INP]
