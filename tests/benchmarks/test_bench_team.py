"""bench_team: its pure helpers on synthetic figures, and a smoke run of the real script
(`--quick --model tiny-random`: the real gateway and a real mlx_lm.server on 127.0.0.1).

No timing is asserted: the smoke run checks the report's structure and that every request
ended with tokens or a clear 429/503."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _common as common
from benchmarks import bench_team as bench
from tests.conftest import ROOT

SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
           "hidden_size": 576, "torch_dtype": "float32"}  # fmt: skip


def test_kv_bytes_per_token_budget_and_memory_load() -> None:
    assert bench.kv_bytes_per_token(SMOLLM2) == 2 * 30 * 3 * 64 * 4  # 46,080: ~45 KiB a token
    # No head_dim or KV heads: hidden / heads, and as many KV heads as heads; bf16 is 2 bytes.
    assert bench.kv_bytes_per_token({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64,
                                     "torch_dtype": "bfloat16"}) == 2 * 2 * 4 * 16 * 2  # fmt: skip
    sizes = bench.Sizes()
    kv = bench.kv_bytes_per_token(SMOLLM2)
    # Half of six agents' final prefixes: 3 x (3,000 + 5 x (70 + 32)) tokens.
    assert bench.prompt_cache_budget(sizes, kv) == 3 * 3510 * kv
    prompt, need = bench.memory_load(sizes, kv, 300_000_000)
    assert prompt + sizes.i_answer_tokens == math.ceil(600_000_000 / kv / 8)
    assert 600_000_000 <= need < 600_000_000 + 8 * kv


def test_healthz_readers_find_disk_figures_whatever_their_shape() -> None:
    stats = bench.flatten({"worker": {"pid": 7, "draining": False, "cache": {"disk": {"hit_tokens": 300, "bytes": 5e6}},
                                      "loaded_models": [{"disk_hit_tokens": 20, "name": "m"}]}})  # fmt: skip
    assert stats["worker.pid"] == 7 and "worker.draining" not in stats
    assert bench.disk_hit_tokens(stats) == 320
    assert bench.disk_size(stats) == 5e6
    assert math.isnan(bench.disk_hit_tokens({"worker.pid": 7.0}))
    assert bench.parse_retry_after("2") == 2.0
    assert bench.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert bench.parse_retry_after(None) is None


def test_outcomes_are_clean_only_when_answered_or_refused_clearly() -> None:
    counts = bench.outcome_counts(["answered", "429", "answered", "cancelled"])
    assert counts == {"429": 1, "answered": 2, "cancelled": 1}
    assert bench.all_clean(counts)
    assert not bench.all_clean({"answered": 3, "error": 1})
    assert not bench.all_clean({"http 500": 1})
    assert not bench.all_clean({"cancelled": 2})  # nothing ended on its own
    assert bench.fmt_counts({}) == "none"


def _raw() -> dict[str, Any]:
    f = {"total_s": 30.0, "follow_ttft_p50": 0.5, "follow_ttft_p95": 0.9, "first_ttft_p50": 15.0,
         "chat_ttft_p50": 0.3, "chat_ttft_p95": 0.6, "cache_share": 0.97, "memory_share": 0.6, "disk_share": 0.37,
         "first_prompt_tokens_p50": 3050, "outcomes": {"answered": 40}}  # fmt: skip
    g = {"alone_ttft": 0.2, "flood_ttft_p50": 0.4, "flood_ttft_p95": 0.5, "ratio": 2.5,
         "probe_outcomes": {"answered": 15}, "flood_outcomes": {"answered": 20, "cancelled": 8}}  # fmt: skip
    h = {"cold_ttft": 8.0, "cold_prompt_tokens": 1530, "follow_ttft": 0.4, "follow_prompt_tokens": 1560,
         "follow_cached_tokens": 1530, "ratio": 0.05, "restart_s": 3.0, "pid_changed": True,
         "outcomes": {"answered": 2}}  # fmt: skip
    i = {"limit_bytes": 838e6, "peak_bytes": 850e6, "hwm_bytes": 850e6, "peak_sampled_bytes": 840e6,
         "peak_vs_limit": 850 / 838, "answered_with_tokens": 6, "survived": True,
         "outcomes": {"answered": 6, "503": 2}}  # fmt: skip
    mlx = {"f": {**f, "total_s": 60.0, "cache_share": 0.3, "disk_share": 0.0, "memory_share": 0.3},
           "g": {**g, "ratio": 250.0}, "h": {**h, "ratio": 1.0, "follow_cached_tokens": 0},
           "i": {**i, "peak_bytes": 2e9, "peak_vs_limit": 2e9 / 838e6, "outcomes": {"answered": 8}}}  # fmt: skip
    return {
        sc: {"runs": {bench.GW: [x], bench.MLX: [mlx[sc]]}}
        for sc, x in (("f", f), ("g", g), ("h", h), ("i", i))
    }


def _meta(sizes: bench.Sizes) -> dict[str, Any]:
    meta = {"command": "python benchmarks/bench_team.py", "code": "commit x", "machine": "m", "date": "d",
            "versions": "v", "blas": "openblas", "load_start": "1/1/1", "load_end": "2/2/2", "model": "smollm2",
            "kv_per_token": 46080, "weights_bytes": 538e6, "prompt_cache_bytes": 485e6, "disk_cache_bytes": 4e9,
            "i_margin_bytes": 300e6, "i_limit_bytes": 838e6, "i_prompt_tokens": 1564, "i_kv_bytes": 600e6,
            "mlx_args": "mlx_lm.server", "gateway_env": "`X=1`", "runs": 1, "wall_min": 3.0}  # fmt: skip
    return {**meta, **bench.describe(sizes, meta)}


def test_summary_goals_and_report() -> None:
    summary = bench.summarize(_raw())
    assert summary["f"]["total_vs_mlx"] == 0.5
    assert summary["i"][bench.GW]["survived"] is True
    met = {(x.scenario, x.label): x.met for x in bench.goals(summary)}
    assert met[("f", "agents: total time, gateway / mlx_lm.server")] is True  # 0.5 <= 0.6
    assert met[("g", "flood: second user's TTFT p95 under the flood / alone (gateway)")] is True
    assert met[("h", "restart: follow-up TTFT after kill -9 / cold prefill (gateway)")] is True
    assert met[("i", "memory: worker peak RSS / MLXM_MEMORY_LIMIT")] is True  # 1.014
    assert met[("i", "memory: every request answered with tokens or a clear 429/503")] is True
    assert bench.Goal("x", "y", "<= 1", math.nan).met is None
    assert bench.Goal("x", "y", "yes", False).met is False

    report = bench.render_report(summary, _meta(bench.Sizes()))
    for heading in ("### Targets", "### (f) agents", "### (g) flood", "### (h) restart", "### (i) memory"):
        assert heading in report
    assert "**met**" in report and "250.00×" in report
    for block in report.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({line.count(" | ") for line in rows if not line.startswith("|---")}) == 1, block
    doc = common.replace_section(common.DOC_INTRO, bench.SECTION_TITLE, report)
    assert common.replace_section(doc, bench.SECTION_TITLE, report) == doc

    # A scenario that failed on one server leaves NaNs and "not measured", not a crash.
    partial = _raw()
    partial["h"]["runs"][bench.GW] = []
    partial_summary = bench.summarize(partial)
    goal = next(x for x in bench.goals(partial_summary) if x.scenario == "h")
    assert goal.met is None
    assert "n/a" in bench.render_report(partial_summary, _meta(bench.Sizes()))


@pytest.mark.slow
def test_quick_run_against_both_servers(demo_models: dict[str, Path], tmp_path: Path) -> None:
    """The script itself, end to end on tiny sizes: real gateway (web + worker, its supervisor
    restarting a SIGKILLed worker), real mlx_lm.server, every scenario."""
    doc = tmp_path / "benchmarks.md"
    doc.write_text(common.DOC_INTRO + "\n## Earlier section\n\nkeep me\n")
    out_json = tmp_path / "team.json"
    data_dir = demo_models["tiny-random"].parent.parent.parent  # <data dir>/shared/models/tiny-random
    env = {**os.environ, "MLXM_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "benchmarks/bench_team.py", "--quick", "--model", "tiny-random",
           "--json", str(out_json), "--write", str(doc)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script stops its servers on SIGTERM
        output, _ = proc.communicate(timeout=180)
        pytest.fail("bench_team.py --quick did not finish in 25 minutes:\n" + output[-4000:])
    assert proc.returncode == 0, output[-8000:]
    raw = json.loads(out_json.read_text())
    assert raw["meta"]["errors"] == []
    for sc in bench.SCENARIOS:
        for server in bench.SERVERS:
            (run,) = raw[sc]["runs"][server]
            for key in bench.COUNTS[sc]:
                counts = run[key]
                assert set(counts) <= {*bench.CLEAN, *bench.OURS}, (sc, server, key, counts)
                if key != "flood_outcomes":  # the flood's may all be ours: cancelled once measured
                    assert bench.all_clean(counts), (sc, server, key, counts)
    # The agents and chat users all talked; the flood's own requests are the only ones we cancelled.
    sizes = bench.Sizes.quick()
    for server in bench.SERVERS:
        # One request in flight per user: every turn answered (a 429/503 first is tried again).
        f_out = raw["f"]["runs"][server][0]["outcomes"]
        assert f_out["answered"] == sizes.agents * sizes.f_turns + sizes.chats * sizes.chat_turns, f_out
        assert (
            sum(raw["g"]["runs"][server][0]["probe_outcomes"].values())
            == sizes.g_alone_probes + sizes.g_probes
        )
        assert raw["h"]["runs"][server][0]["pid_changed"] is True
        assert raw["i"]["runs"][server][0]["peak_bytes"] > 0
    assert raw["i"]["runs"][bench.GW][0]["limit_bytes"] == raw["meta"]["i_limit_bytes"]

    text = doc.read_text()
    assert "keep me" in text and text.count(bench.SECTION_TITLE) == 1
    assert "--quick sizes: a smoke run" in text
    for heading in ("### Targets", "### (f) agents", "### (g) flood", "### (h) restart", "### (i) memory"):
        assert heading in text
