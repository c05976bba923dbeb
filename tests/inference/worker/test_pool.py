"""Pool admission control, pinning, TTL and admin commands, on real tiny models."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from inference import protocol as p
from inference.worker.pool import Pool, estimate_bytes
from inference.worker.scheduler import Scheduler
from tests.inference.worker.test_scheduler import Conn, collect, gen

pytestmark = pytest.mark.slow


@pytest.fixture
def models(demo_models: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Three copies of the tiny model: three distinct pool entries of the same size."""
    out = {}
    for name in ("a", "b", "c"):
        out[name] = tmp_path / f"tiny-{name}"
        shutil.copytree(demo_models["tiny-random"], out[name])
    return out


def make_sched(limit: int, preload: list[p.ModelSpec] | None = None) -> Scheduler:
    s = Scheduler(
        lambda conn, items: [conn.inbox.put(i) for i in items], pool=Pool(memory_limit=limit), preload=preload
    )
    s.start()
    return s


@pytest.fixture
def room_for_two(models: dict[str, Path]) -> Any:
    size = estimate_bytes(p.ModelSpec(name="a", path=str(models["a"])))
    s = make_sched(int(size * 2.5))
    yield s
    s.stop()
    s.join(timeout=10)


def spec(models: dict[str, Path], name: str, **kw: Any) -> dict[str, Any]:
    return {"path": models[name], "content": f"hello {name}", "spec": kw}


def ask(sched: Scheduler, models: dict[str, Path], name: str, **kw: Any) -> Any:
    conn = Conn()
    req = gen(f"req-{name}-{time.monotonic_ns()}", models[name], f"hi {name}", kw or None, max_tokens=4)
    req = p.Generate(
        request_id=req.request_id,
        model=p.ModelSpec(name=name, path=str(models[name]), **kw),
        sampling=req.sampling,
        messages=req.messages,
    )
    sched.submit(conn, req)
    return collect(conn, {req.request_id})[req.request_id][1]


def loaded(sched: Scheduler) -> list[str]:
    sched._refresh_snapshot()
    return sorted(m["name"] for m in sched.snapshot["models"])


def command(sched: Scheduler, models: dict[str, Path], action: str, name: str) -> Any:
    conn = Conn()
    sched.submit(
        conn,
        p.PoolCommand(request_id="cmd", action=action, model=p.ModelSpec(name=name, path=str(models[name]))),
    )
    return conn.inbox.get(timeout=60)


def test_lru_eviction_makes_room(room_for_two: Scheduler, models: dict[str, Path]) -> None:
    s = room_for_two
    assert isinstance(ask(s, models, "a"), p.Output)
    assert isinstance(ask(s, models, "b"), p.Output)
    assert isinstance(ask(s, models, "a"), p.Output)  # a is now the most recent
    assert isinstance(ask(s, models, "c"), p.Output)
    assert loaded(s) == ["a", "c"]  # b was least recently used
    assert s.snapshot["memory"]["evictions"] == 1
    assert s.snapshot["memory"]["used_bytes"] <= s.snapshot["memory"]["limit_bytes"]


def test_pinned_models_are_never_evicted(room_for_two: Scheduler, models: dict[str, Path]) -> None:
    s = room_for_two
    ask(s, models, "a", pinned=True)
    ask(s, models, "b")
    ask(s, models, "c")
    assert loaded(s) == ["a", "c"]


def test_no_room_is_a_clear_overload_error(room_for_two: Scheduler, models: dict[str, Path]) -> None:
    s = room_for_two
    ask(s, models, "a", pinned=True)
    ask(s, models, "b", pinned=True)
    err = ask(s, models, "c")
    assert isinstance(err, p.RequestError)
    assert err.code == p.ERR_OVERLOADED
    assert "not enough memory" in err.message and "'c'" in err.message
    assert loaded(s) == ["a", "b"]


def test_model_bigger_than_the_limit(models: dict[str, Path]) -> None:
    s = make_sched(1024)
    try:
        err = ask(s, models, "a")
        assert isinstance(err, p.RequestError) and err.code == p.ERR_OVERLOADED
        assert "more than the pool's memory limit" in err.message
    finally:
        s.stop()


def test_idle_models_unload_after_keep_alive(room_for_two: Scheduler, models: dict[str, Path]) -> None:
    s = room_for_two
    ask(s, models, "a", keep_alive_s=0.2)
    ask(s, models, "b")
    deadline = time.monotonic() + 10
    while "a" in loaded(s) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loaded(s) == ["b"]


def test_admin_commands(room_for_two: Scheduler, models: dict[str, Path]) -> None:
    s = room_for_two
    assert command(s, models, "load", "a") == p.PoolReply(request_id="cmd", message="loaded a")
    assert loaded(s) == ["a"]
    assert command(s, models, "pin", "a").message == "pinned a"
    assert [m["pinned"] for m in s.snapshot["models"]] == [True]
    assert command(s, models, "unpin", "a").message == "unpinned a"
    assert command(s, models, "unload", "a").message == "unloaded a"
    assert loaded(s) == []
    err = command(s, models, "unload", "a")
    assert isinstance(err, p.RequestError) and "not loaded" in err.message
    err = command(s, models, "dance", "b")
    assert isinstance(err, p.RequestError)


def test_unloading_a_busy_model_is_refused(room_for_two: Scheduler, models: dict[str, Path]) -> None:
    s = room_for_two
    conn = Conn()
    # Long enough to be busy, short enough that its KV cache fits the small limit.
    s.submit(conn, gen("busy", models["a"], "long", max_tokens=1_000))
    conn.inbox.get(timeout=30)
    err = command(s, models, "unload", "a")
    assert isinstance(err, p.RequestError) and "serving" in err.message
    s.submit(conn, p.Abort(request_id="busy"))


def test_preload_at_start(models: dict[str, Path]) -> None:
    s = make_sched(
        1 << 30, preload=[p.ModelSpec(name="b", path=str(models["b"])), p.ModelSpec(name="x", path="/nope")]
    )
    try:
        deadline = time.monotonic() + 30
        while "b" not in loaded(s) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert loaded(s) == ["b"]  # the broken one is logged and skipped
    finally:
        s.stop()


def test_context_length_is_enforced(room_for_two: Scheduler, models: dict[str, Path]) -> None:
    s = room_for_two
    err = ask(s, models, "a", context_length=5)
    assert isinstance(err, p.RequestError) and err.code == p.ERR_BAD_REQUEST
    assert "maximum context length is 5 tokens" in err.message
    # A prompt that fits gets max_tokens cut to what is left of the context.
    out = ask(s, models, "a", context_length=40)
    assert isinstance(out, p.Output)
    assert out.prompt_tokens + out.completion_tokens <= 40


# ---- the memory budget: weights, KV caches and prompt caches under one limit -----------------


def _engine(sched: Scheduler) -> Any:
    (engine,) = list(sched.pool)
    return engine


def _kv_need(sched: Scheduler, req: p.Generate) -> int:
    engine = _engine(sched)
    return int(engine.kv_need(len(engine._tokenize(req)) + req.sampling.max_tokens))


def _run(sched: Scheduler, req: p.Generate) -> Any:
    conn = Conn()
    sched.submit(conn, req)
    return collect(conn, {req.request_id})[req.request_id][1]


def test_prompt_cache_gives_back_lru_entries_when_a_request_needs_room(models: dict[str, Path]) -> None:
    s = make_sched(1 << 30)
    try:
        for i in range(3):
            assert isinstance(
                _run(s, gen(f"turn-{i}", models["a"], f"conversation {i} " * 8, max_tokens=4)), p.Output
            )
        engine = _engine(s)
        cache = engine.prompt_cache
        oldest_first = [tokens for _, tokens in cache._lru._lrus["assistant"]]
        assert len(oldest_first) == 3
        sizes = [cache._trie.get(engine.spec.path, t).nbytes for t in oldest_first]
        req = gen("needs-room", models["a"], "a new question", max_tokens=8)
        need = _kv_need(s, req)
        # Room for the new request's KV only once the oldest entry is given back.
        s.pool.memory_limit = s.pool.weight_bytes + cache.nbytes + need - sizes[0] // 2
        assert isinstance(_run(s, req), p.Output)
        left = [tokens for _, tokens in cache._lru._lrus["assistant"]]
        assert oldest_first[0] not in left
        assert oldest_first[1] in left and oldest_first[2] in left
    finally:
        s.stop()
        s.join(timeout=10)


def test_a_request_whose_kv_cannot_fit_is_refused_while_nothing_could_free_room(
    models: dict[str, Path],
) -> None:
    s = make_sched(1 << 30)
    try:
        assert isinstance(_run(s, gen("warm", models["a"], "hello", max_tokens=2)), p.Output)
        _engine(s).prompt_cache.trim_to(n_bytes=0)
        big = gen("big", models["a"], "hello there", max_tokens=1000)
        need = _kv_need(s, big)
        s.pool.memory_limit = s.pool.weight_bytes + need // 2
        err = _run(s, big)
        assert isinstance(err, p.RequestError) and err.code == p.ERR_OVERLOADED
        assert f"needs about {round(need / 1e6)} MB of KV cache" in err.message
        assert "free under the memory limit of" in err.message
        # A request that fits still runs.
        assert isinstance(_run(s, gen("small", models["a"], "hi", max_tokens=4)), p.Output)
        assert s.is_alive()
    finally:
        s.stop()
        s.join(timeout=10)


def _room_for_one_long_request(s: Scheduler, models: dict[str, Path], max_tokens: int) -> p.Generate:
    assert isinstance(_run(s, gen("warm", models["a"], "hello", max_tokens=2)), p.Output)
    _engine(s).prompt_cache.trim_to(n_bytes=0)
    long = gen("long", models["a"], "the long one", max_tokens=max_tokens)
    need = _kv_need(s, long)
    s.pool.memory_limit = s.pool.weight_bytes + need + need // 2  # one fits, not two
    return long


def test_a_request_waits_for_kv_room_and_runs_when_another_finishes(models: dict[str, Path]) -> None:
    s = make_sched(1 << 30)
    try:
        long = _room_for_one_long_request(s, models, 1500)
        conn = Conn()
        s.submit(conn, long)
        first = conn.inbox.get(timeout=30)  # the long one is decoding
        assert isinstance(first, p.Output) and first.request_id == "long"
        s.submit(conn, gen("second", models["a"], "the second one", max_tokens=1500))
        seen: list[Any] = []
        while not (seen and seen[-1].request_id == "second" and seen[-1].finish_reason):
            seen.append(conn.inbox.get(timeout=120))
            assert isinstance(seen[-1], p.Output), seen[-1]
        ends = [i for i, o in enumerate(seen) if o.finish_reason]
        long_end = next(i for i in ends if seen[i].request_id == "long")
        second_start = next(i for i, o in enumerate(seen) if o.request_id == "second")
        # It waited: its first token came only after the long one had ended.
        assert second_start > long_end
        assert seen[long_end].completion_tokens == seen[-1].completion_tokens == 1500
    finally:
        s.stop()
        s.join(timeout=10)


def test_a_request_waiting_past_the_memory_wait_is_refused_while_the_other_continues(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLXM_MEMORY_WAIT_S", "0.2")
    s = make_sched(1 << 30)
    try:
        long = _room_for_one_long_request(s, models, 1900)
        conn = Conn()
        s.submit(conn, long)
        conn.inbox.get(timeout=30)
        s.submit(conn, gen("second", models["a"], "the second one", max_tokens=1900))
        done = collect(conn, {"long", "second"}, timeout=120)
        err = done["second"][1]
        assert isinstance(err, p.RequestError) and err.code == p.ERR_OVERLOADED
        assert "needs about" in err.message and "waited 0s" in err.message
        final = done["long"][1]
        assert isinstance(final, p.Output) and final.finish_reason == "length"
        assert final.completion_tokens == 1900
    finally:
        s.stop()
        s.join(timeout=10)


def test_memory_stats_split_weights_kv_and_prompt_cache(models: dict[str, Path]) -> None:
    s = make_sched(1 << 30)
    try:
        assert isinstance(_run(s, gen("warm", models["a"], "hello", max_tokens=2)), p.Output)
        long = gen("long", models["a"], "a long answer " * 20, max_tokens=1500)
        short = gen("short", models["a"], "short", max_tokens=1000)
        needs = [_kv_need(s, long), _kv_need(s, short)]
        assert needs[0] > needs[1]
        conn = Conn()
        s.submit(conn, long)
        s.submit(conn, short)
        # Both rows in one batch: mlx-lm pads them to the longest, so both count as the longest.
        deadline = time.monotonic() + 30
        while s.snapshot["memory"]["kv_bytes"] != 2 * needs[0]:
            assert time.monotonic() < deadline, s.snapshot["memory"]
            time.sleep(0.01)
        assert s.snapshot["memory"]["weights_bytes"] == _engine(s).weight_bytes
        collect(conn, {"long", "short"}, timeout=120)
        s._refresh_snapshot()
        idle = s.snapshot["memory"]
        assert idle["kv_bytes"] == 0
        assert idle["prompt_cache_bytes"] == _engine(s).prompt_cache.nbytes > 0  # its KV, kept
        assert idle["used_bytes"] == idle["weights_bytes"] + idle["kv_bytes"] + idle["prompt_cache_bytes"]
        assert idle["free_bytes"] == idle["limit_bytes"] - idle["used_bytes"]
        assert idle["mlx_peak_bytes"] >= idle["mlx_active_bytes"] > 0
        (model,) = s.snapshot["models"]
        assert model["weights_form"] == "float32"
        assert model["prompt_cache_limit_bytes"] == 512 << 20
    finally:
        s.stop()
        s.join(timeout=10)


def test_per_profile_prompt_cache_share_reaches_the_engine(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLXM_PROMPT_CACHE_BYTES", "1%")
    s = make_sched(100_000_000)
    try:
        assert isinstance(ask(s, models, "a"), p.Output)
        assert _engine(s).prompt_cache.max_bytes == 1_000_000  # 1% of the limit
        assert isinstance(ask(s, models, "a", prompt_cache_bytes=4096), p.Output)
        assert _engine(s).prompt_cache.max_bytes == 4096
        assert _engine(s).prompt_cache.nbytes <= 4096
        assert loaded(s) == ["a"] and s.snapshot["models"][0]["prompt_cache_limit_bytes"] == 4096
    finally:
        s.stop()
        s.join(timeout=10)


# ---- quantized models on the CPU: dequantized when the budget allows --------------------------


@pytest.fixture(scope="module")
def quantized_tiny(demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlx_lm import convert

    dest = tmp_path_factory.mktemp("quantized") / "tiny-q4"
    convert(str(demo_models["tiny-random"]), mlx_path=str(dest), quantize=True, q_group_size=32, q_bits=4)
    return dest


@pytest.mark.skipif(sys.platform == "darwin", reason="float32 weights are the CPU's (mlx[cpu]) choice")
@pytest.mark.parametrize(
    ("limit", "setting", "form"),
    [
        (1 << 30, "auto", "float32 (dequantized from 4-bit)"),  # fits: dequantized
        (10_000_000, "auto", "4-bit"),  # float32 + its prompt-cache share don't fit: kept
        (1 << 30, "off", "4-bit"),  # forced off
    ],
)
def test_dequantize_is_decided_by_the_budget(
    quantized_tiny: Path, monkeypatch: pytest.MonkeyPatch, limit: int, setting: str, form: str
) -> None:
    monkeypatch.setenv("MLXM_CPU_DEQUANTIZE", setting)
    pool = Pool(memory_limit=limit)
    spec = p.ModelSpec(name="tiny-q4", path=str(quantized_tiny))
    engine = pool.get(spec)
    try:
        assert engine.stats()["weights_form"] == form
        # The pool admitted the load with the size it actually takes.
        assert engine.weight_bytes == estimate_bytes(spec, dequantize=form.startswith("float32"))
        conn = Conn()
        engine.add(gen("q", quantized_tiny, "hello"), conn)
        outs = []
        while engine.active:
            outs += engine.step()
        assert outs[-1][1].completion_tokens == 16
    finally:
        pool.unload(spec.key)


def test_the_worker_counts_its_own_process_under_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from inference.worker import memory
    from inference.worker import pool as pool_module

    monkeypatch.setattr(pool_module, "RUNTIME_EVERY_S", 3600.0)  # no clock in this test
    monkeypatch.setenv("MLXM_MEMORY_HEADROOM", "10%")
    readings = iter([100, 80, 120, 90])
    monkeypatch.setattr(memory, "runtime_bytes", lambda: next(readings))
    plain = Pool(memory_limit=10_000)
    plain.measure_runtime()
    assert (
        plain.used_bytes == 0 and plain.memory_stats()["runtime_bytes"] == 0
    )  # a pool inside a test process
    pool = Pool(memory_limit=10_000, count_runtime=True)
    pool.measure_runtime()
    assert pool.runtime_bytes == 100
    stats = pool.memory_stats()
    assert stats["headroom_bytes"] == 1000 and stats["used_bytes"] == 1100 == pool.used_bytes
    assert stats["free_bytes"] == 8900
    pool.measure_runtime(rising=True)  # busy, right after a reading: not read again yet
    pool._runtime_at = float("-inf")  # as if the last reading were long ago
    pool.measure_runtime(rising=True)  # busy: a lower reading (80) does not count
    assert pool.runtime_bytes == 100
    pool._runtime_at = float("-inf")  # as if the last reading were long ago
    pool.measure_runtime(rising=True)
    assert pool.runtime_bytes == 120
    pool.measure_runtime()  # idle again: what it holds now
    assert pool.runtime_bytes == 90


def test_short_of_room_the_heaps_free_pages_are_given_back_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from inference.worker import memory
    from inference.worker import pool as pool_module

    monkeypatch.setattr(pool_module, "RECLAIM_EVERY_S", 3600.0)  # "so soon", whatever the clock
    monkeypatch.setenv("MLXM_MEMORY_HEADROOM", "0")
    trims: list[float] = []
    readings = iter([900, 300])  # resident less MLX's arrays: before and after the trim
    monkeypatch.setattr(memory, "trim_heap", lambda: trims.append(time.monotonic()) or True)
    monkeypatch.setattr(memory, "runtime_bytes", lambda: next(readings))
    pool = Pool(memory_limit=1000, count_runtime=True)
    pool.measure_runtime()
    assert pool.make_kv_room(None, 50)  # fits: nothing given back
    assert trims == []
    assert pool.make_kv_room(None, 600)  # 100 free: the heap's free pages go back, then it fits
    assert len(trims) == 1 and pool.runtime_bytes == 300
    assert not pool.make_kv_room(None, 800)  # still short: not trimmed again so soon
    assert len(trims) == 1
