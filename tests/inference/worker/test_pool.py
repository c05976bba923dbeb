"""Pool admission control, pinning, TTL and admin commands, on real tiny models."""

from __future__ import annotations

import shutil
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
