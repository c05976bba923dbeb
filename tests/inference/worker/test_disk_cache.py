"""The prompt cache's disk tier: prefixes that survive a `kill -9` of a real worker, damaged
files skipped, the byte budget's LRU order, and a changed model's entries ignored."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache, load_prompt_cache

from inference import protocol as p
from inference.client import EngineClient
from inference.worker import disk_cache
from inference.worker.adapters import llm
from tests.conftest import ROOT

# A few hundred tokens on tiny-random: well above disk_cache.MIN_TOKENS.
PROMPT = " ".join(f"tool{i} does thing{i % 7}" for i in range(120))


def _files(kv: Path) -> list[Path]:
    return sorted(kv.glob("*/*" + disk_cache.SUFFIX))


# ---- a real worker process, killed -------------------------------------------------


def _start_worker(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(data / "w.sock")
    if os.path.exists(sock):
        os.unlink(sock)  # left by the killed one
    env = {**os.environ, "MLXM_DATA_DIR": str(data), "MLXM_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "inference.worker", "--socket", sock], cwd=ROOT, env=env,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "worker did not start"
        time.sleep(0.05)
    return proc, sock


def _ask(sock: str, model: Path, rid: str) -> tuple[str, p.Output]:
    async def go() -> tuple[str, p.Output]:
        client = EngineClient(sock)
        spec = p.ModelSpec(name="tiny-random", path=str(model))
        req = p.Generate(request_id=rid, model=spec, sampling=p.SamplingParams(max_tokens=12, temperature=0.0),
                         messages=[{"role": "system", "content": PROMPT},
                                   {"role": "user", "content": "hi"}])  # fmt: skip
        text, last = "", None
        try:
            async for outs in client.generate(req):
                text += "".join(o.text for o in outs)
                last = outs[-1]
        finally:
            await client.aclose()
        assert last is not None and last.finish_reason
        return text, last

    return asyncio.run(go())


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["none", "truncated", "corrupted"])
def test_a_prefix_on_disk_survives_kill_9_and_a_damaged_file_is_skipped(
    demo_models: dict[str, Path], tmp_path: Path, damage: str
) -> None:
    model = demo_models["tiny-random"]
    proc, sock = _start_worker(tmp_path)
    try:
        cold, first = _ask(sock, model, "cold")
        assert first.cached_tokens == 0
        deadline = time.monotonic() + 30
        while not _files(tmp_path / "kv"):  # written through, on the worker's writer thread
            assert time.monotonic() < deadline, "the prefix was never written to disk"
            time.sleep(0.05)
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    (entry,) = _files(tmp_path / "kv")
    if damage == "truncated":
        with open(entry, "r+b") as f:
            f.truncate(entry.stat().st_size // 2)
    elif damage == "corrupted":
        with open(entry, "r+b") as f:
            f.seek(-64, os.SEEK_END)
            f.write(b"\xff" * 64)

    proc, sock = _start_worker(tmp_path)
    try:
        warm, after = _ask(sock, model, "after-restart")
        assert warm == cold  # the same greedy text as the cold run
        if damage == "none":
            assert 0 < after.cached_tokens < after.prompt_tokens
        else:
            assert after.cached_tokens == 0  # skipped: the prompt was prefilled
            again, third = _ask(sock, model, "third")  # the worker goes on
            assert again == cold and third.cached_tokens > 0
        assert proc.poll() is None
    finally:
        _kill(proc)


# ---- in-process engines on a configured disk tier ------------------------------------


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "kv"
    disk_cache.configure(None, 0)


def _engine(model: Path) -> Any:
    return llm.LLMEngine(p.ModelSpec(name="tiny-random", path=str(model)))


def _generate(engine: Any, system: str, rid: str) -> p.Output:
    engine.add(p.Generate(request_id=rid, model=engine.spec,
                          sampling=p.SamplingParams(max_tokens=6, temperature=0.0),
                          messages=[{"role": "system", "content": system},
                                    {"role": "user", "content": "hi"}]), None)  # fmt: skip
    for _ in range(500):
        for _conn, out in engine.step():
            if out.finish_reason:
                return out
    raise AssertionError("not finished")


def _restart(kv: Path, budget: int, model: Path) -> tuple[disk_cache.DiskCache, Any]:
    """A new process's view: the folder scanned again, a fresh engine (empty memory tier)."""
    store = disk_cache.configure(kv, budget)
    assert store is not None
    return store, _engine(model)


def _prompt(tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(150))


def test_the_disk_budget_evicts_the_least_recently_used_first(
    demo_models: dict[str, Path], tier: Path
) -> None:
    model = demo_models["tiny-random"]
    store, engine = _restart(tier, 1 << 30, model)
    _generate(engine, _prompt("a"), "probe")
    assert store.flush()
    (probe,) = _files(tier)
    one = probe.stat().st_size
    probe.unlink()

    # Room for two entries (the prompts tokenize to the same length).
    store, engine = _restart(tier, int(one * 2.5), model)
    _generate(engine, _prompt("a"), "a")
    assert store.flush()
    time.sleep(0.01)
    _generate(engine, _prompt("b"), "b")
    assert store.flush()
    time.sleep(0.01)
    _generate(engine, _prompt("a"), "a-again")  # on disk already: used, not written again
    assert store.flush()
    time.sleep(0.01)
    _generate(engine, _prompt("c"), "c")
    assert store.flush()
    assert len(_files(tier)) == 2
    assert store.stats() == (2, sum(f.stat().st_size for f in _files(tier)))

    # After a restart: a and c come from disk, b (least recently used) was removed.
    store, engine = _restart(tier, int(one * 2.5), model)
    a, c = _generate(engine, _prompt("a"), "a2"), _generate(engine, _prompt("c"), "c2")
    assert a.cached_tokens > 0 and c.cached_tokens > 0
    _generate(engine, _prompt("b"), "b2")  # only the chat template's first tokens, from memory
    assert engine.stats()["disk_hit_tokens"] == a.cached_tokens + c.cached_tokens


def test_a_changed_models_entries_are_ignored(
    demo_models: dict[str, Path], tier: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(demo_models["tiny-random"], model)
    store, engine = _restart(tier, 1 << 30, model)
    cold = _generate(engine, _prompt("a"), "cold")
    assert store.flush() and len(_files(tier)) == 1
    assert engine.stats()["disk_cache_entries"] == 1

    # Same files, newer weights: the old entry is not this model's.
    st = (model / "model.safetensors").stat()
    os.utime(model / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    store, engine = _restart(tier, 1 << 30, model)
    assert engine.stats()["disk_cache_entries"] == 0
    out = _generate(engine, _prompt("a"), "changed")
    assert out.cached_tokens == 0 and out.prompt_tokens == cold.prompt_tokens
    assert store.flush()
    assert len({f.parent for f in _files(tier)}) == 2  # one folder per model identity


def test_leftovers_and_unreadable_files_are_removed_not_loaded(
    demo_models: dict[str, Path], tier: Path
) -> None:
    model = demo_models["tiny-random"]
    store, engine = _restart(tier, 1 << 30, model)
    _generate(engine, _prompt("a"), "a")
    assert store.flush()
    (good,) = _files(tier)
    tmp = good.with_name(good.name + ".123.tmp")  # a write a kill interrupted
    tmp.write_bytes(good.read_bytes()[:100])
    junk = good.with_name("0" * 40 + disk_cache.SUFFIX)
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")

    store, engine = _restart(tier, 1 << 30, model)
    assert not tmp.exists()
    out = _generate(engine, _prompt("a"), "again")
    assert out.cached_tokens > 0  # the good entry
    assert not junk.exists() and store.skipped_corrupt == 1


def test_the_budget_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLXM_DISK_CACHE_BYTES", raising=False)
    assert disk_cache.budget_from_env() == disk_cache.DEFAULT_BYTES
    monkeypatch.setenv("MLXM_DISK_CACHE_BYTES", "0")
    assert disk_cache.budget_from_env() == 0
    for bad in ("lots", "-1"):
        monkeypatch.setenv("MLXM_DISK_CACHE_BYTES", bad)
        with pytest.raises(ValueError, match="MLXM_DISK_CACHE_BYTES"):
            disk_cache.budget_from_env()


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_an_entry_round_trips_through_mlx_lms_loader(tmp_path: Path, dtype: mx.Dtype) -> None:
    """The writer's files are what `save_prompt_cache` writes: `load_prompt_cache` reads
    them back bit for bit, from a KVCache's strided state (offset short of its buffer)."""
    cache = []
    for layer in range(2):
        c = KVCache()
        keys = mx.random.normal((1, 2, disk_cache.MIN_TOKENS + 3, 8), key=mx.random.key(layer)).astype(dtype)
        c.update_and_fetch(keys, keys * 2)
        cache.append(c)
    tokens = list(range(disk_cache.MIN_TOKENS + 3))
    store = disk_cache.DiskCache(tmp_path / "kv", 1 << 30)
    try:
        store.save("m", tokens, cache)
        assert store.flush()
        store.save("m", tokens, cache)  # on disk already: nothing queued
        assert store.flush() and store.stats() == (1, _files(tmp_path / "kv")[0].stat().st_size)
        found = store.nearest("m", tokens + [9, 9], better_than=0)
        assert found is not None and found[1] == len(tokens)
        loaded = store.load(found[0])
        (path,) = _files(tmp_path / "kv")
        theirs, meta = load_prompt_cache(str(path), return_metadata=True)
    finally:
        store.close()
    assert loaded is not None and meta["tokens"] == ",".join(map(str, tokens))
    for ours, original, mlx_lm in zip(loaded, cache, theirs, strict=True):
        assert ours.offset == original.offset == mlx_lm.offset == len(tokens)
        for a, b in zip(ours.state[:2], original.state[:2], strict=True):
            assert a.dtype == dtype and mx.array_equal(a, b).item()


def test_a_folder_that_cannot_be_made_leaves_the_tier_off(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    try:
        assert disk_cache.configure(tmp_path / "file" / "kv", 1 << 30) is None
        assert disk_cache.for_model(str(tmp_path)) is None  # engines run with memory only
    finally:
        disk_cache.configure(None, 0)
