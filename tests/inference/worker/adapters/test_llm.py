"""LLMEngine on the tiny model: prefill slicing (how many prompt tokens one step may take while
others decode) and when a batched request's first token goes out."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from inference import protocol as p
from inference.worker.adapters import llm


@pytest.fixture
def engine(demo_models: dict[str, Path]) -> Any:
    e = llm.LLMEngine(p.ModelSpec(name="tiny-random", path=str(demo_models["tiny-random"])))
    yield e
    e._by_uid = {}  # the tests' stand-in rows are not in the batch
    e.close()


def _rows(engine: Any, *completion_tokens: int, owners: str = "") -> None:
    engine._by_uid = {
        i: SimpleNamespace(completion_tokens=n, owner=owners[i] if owners else "")
        for i, n in enumerate(completion_tokens)
    }


def test_full_chunks_until_a_rate_is_known_or_when_nobody_decodes(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm, "PREFILL_SLICE_S", 1.0)
    monkeypatch.setattr(llm, "PREFILL_BATCH_SLICE_S", 2.5)
    _rows(engine, 5, 0)
    assert engine._prefill_step() == llm.PREFILL_STEP  # no rate measured yet
    engine._prefill_rate = 1000.0
    _rows(engine, 0, 0)
    assert engine._prefill_step() == llm.PREFILL_STEP  # nobody waits for tokens
    engine._prefill_rate = 100.0  # one user's prompts still come in steps of about 2.5 s
    assert engine._prefill_step() == 125


def test_prompts_of_two_users_share_the_short_slice(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood's long prompts and another user's short one prefill in steps of about
    PREFILL_SLICE_S: the short one is not held behind full chunks of the long ones."""
    monkeypatch.setattr(llm, "PREFILL_SLICE_S", 1.0)
    monkeypatch.setattr(llm, "PREFILL_BATCH_SLICE_S", 2.5)
    engine._prefill_rate = 400.0
    _rows(engine, 0, 0, 0, 0, owners="aaaa")
    assert engine._prefill_step() == 250
    _rows(engine, 0, 0, 0, 0, owners="aaab")
    assert engine._prefill_step() == 100


def test_a_slice_takes_about_the_budget_shared_by_the_prompts_prefilling(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm, "PREFILL_SLICE_S", 1.0)
    engine._prefill_rate = 200.0  # tokens/s
    _rows(engine, 7, 0)
    assert engine._prefill_step() == 200
    _rows(engine, 7, 3, 0, 0)
    assert engine._prefill_step() == 100  # two prompts share the slice
    engine._prefill_rate = 10.0
    assert engine._prefill_step() == llm.PREFILL_MIN_STEP
    engine._prefill_rate = 1e6
    assert engine._prefill_step() == llm.PREFILL_STEP
    monkeypatch.setattr(llm, "PREFILL_SLICE_S", 0.0)  # MLXM_PREFILL_SLICE_MS=0: always full chunks
    engine._prefill_rate = 10.0
    assert engine._prefill_step() == llm.PREFILL_STEP


def _gen(engine: Any, rid: str, content: str, max_tokens: int = 8) -> p.Generate:
    return p.Generate(
        request_id=rid,
        model=engine.spec,
        sampling=p.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        messages=[{"role": "user", "content": content}],
    )


def _until_done(engine: Any, rids: set[str]) -> dict[str, list[p.Output]]:
    got: dict[str, list[p.Output]] = {r: [] for r in rids}
    for _ in range(200):
        for _conn, out in engine.step():
            if out.request_id in got:  # others may still be running
                got[out.request_id].append(out)
        if all(outs and outs[-1].finish_reason for outs in got.values()):
            return got
    raise AssertionError(f"not finished: {got}")


def test_first_token_goes_out_in_the_step_that_ends_the_prefill(engine: Any) -> None:
    """Not one batch step later, when mlx-lm's BatchGenerator would report it; and the
    batch's own later report of that token is not sent twice."""
    prompts = {"a": "the first one", "b": "and the second one"}
    alone = {}
    for rid, content in prompts.items():
        engine.add(_gen(engine, rid, content), conn=None)
        alone[rid] = _until_done(engine, {rid})[rid]
        assert alone[rid][0].completion_tokens == 1  # its first token makes text
    for rid, content in prompts.items():  # the first alone, the second moves it into the batch
        engine.add(_gen(engine, rid + "2", content), conn=None)
    for _ in range(20):
        outputs = [out for _conn, out in engine.step()]
        if engine.batch._generation_batch.uids:  # their prefill ended in this step
            assert sorted(o.request_id for o in outputs) == ["a2", "b2"]
            assert all(o.completion_tokens == 1 for o in outputs)
            break
        assert not outputs
    else:
        raise AssertionError("the prefill never ended")
    rest = _until_done(engine, {"a2", "b2"})
    for rid in ("a", "b"):
        together = outputs[[o.request_id for o in outputs].index(rid + "2")], *rest[rid + "2"]
        assert [o.completion_tokens for o in together] == [o.completion_tokens for o in alone[rid]]
        assert "".join(o.text for o in together) == "".join(o.text for o in alone[rid])
    assert engine.active == 0


def test_a_request_ended_by_its_first_token_leaves_the_batch(engine: Any) -> None:
    engine.add(_gen(engine, "long", "a long one", max_tokens=30), conn=None)
    engine.add(_gen(engine, "one", "just one token", max_tokens=1), conn=None)
    got = _until_done(engine, {"long", "one"})
    assert [(o.completion_tokens, o.finish_reason) for o in got["one"]] == [(1, "length")]
    assert got["long"][-1].completion_tokens == 30
    assert engine.active == 0 and not engine.batch._generation_batch.uids


def test_a_request_joining_decoding_ones_gets_its_first_token_in_its_first_step(engine: Any) -> None:
    """Its prefill (a short prompt: one chunk) and its first token in one step, not two: it
    joins the decoding rows at the end of the step that prefilled it."""
    engine.add(_gen(engine, "a", "first", max_tokens=40), conn=None)
    engine.add(_gen(engine, "b", "second", max_tokens=40), conn=None)
    for _ in range(20):  # until both decode
        if {o.request_id for _c, o in engine.step()} == {"a", "b"}:
            break
    content = "a late one, never seen before"
    engine.add(_gen(engine, "late", content), conn=None)
    first = [o for _c, o in engine.step() if o.request_id == "late"]
    assert [o.completion_tokens for o in first] == [1]
    late = first + _until_done(engine, {"late"})["late"]
    _until_done(engine, {"a", "b"})
    engine.add(_gen(engine, "alone", content), conn=None)  # the same prompt, alone
    alone = _until_done(engine, {"alone"})["alone"]
    assert "".join(o.text for o in late) == "".join(o.text for o in alone)


def test_the_final_output_carries_the_workers_timings(engine: Any) -> None:
    """queued_s: from its arrival in the worker to its start here; prefill_s: from there to its
    first token (the web side's trace spans). Only the final output has them, in every lane."""
    arrived = time.perf_counter() - 0.25  # it waited a quarter second for the scheduler thread
    engine.add(_gen(engine, "solo", "timed, alone"), conn=None, arrived=arrived)
    assert engine._solo is not None
    outs = _until_done(engine, {"solo"})["solo"]
    *early, final = outs
    assert all(o.queued_s is None and o.prefill_s is None for o in early)
    assert final.queued_s is not None and 0.25 <= final.queued_s < 5
    assert final.prefill_s is not None and 0 < final.prefill_s < 5
    # Batched (two at once), and without a known arrival (it counts from the engine's add).
    engine.add(_gen(engine, "x", "batched one", max_tokens=6), conn=None)
    engine.add(_gen(engine, "y", "batched two", max_tokens=6), conn=None, arrived=time.perf_counter())
    got = _until_done(engine, {"x", "y"})
    for rid in ("x", "y"):
        final = got[rid][-1]
        assert final.queued_s is not None and 0 <= final.queued_s < 1
        assert final.prefill_s is not None and 0 < final.prefill_s < 5
        assert all(o.queued_s is None for o in got[rid][:-1])
    assert not engine._arrivals  # nothing left behind


def test_an_aborted_or_refused_request_leaves_no_arrival_behind(engine: Any) -> None:
    engine.add(_gen(engine, "gone", "to be aborted", max_tokens=50), conn=None, arrived=time.perf_counter())
    engine.step()
    assert engine.abort("gone")
    neither = p.Generate(request_id="bad", model=engine.spec, sampling=p.SamplingParams())  # no prompt
    with pytest.raises(llm.BadRequest):
        engine.add(neither, conn=None, arrived=time.perf_counter())
    assert not engine._arrivals


def test_prefill_chunks_are_cut_to_the_memory_left_under_the_limit(engine: Any) -> None:
    from inference.worker import memory

    def pool(limit: int, used: int, freed: int = 0) -> SimpleNamespace:
        """A stand-in pool whose `reclaim` (the heap's free pages given back) frees `freed`."""
        fake = SimpleNamespace(memory_limit=limit, used_bytes=used, reclaims=0)

        def reclaim() -> bool:
            fake.reclaims += 1
            fake.used_bytes -= freed
            return freed > 0

        fake.reclaim = reclaim
        return fake

    engine._by_uid = {i: SimpleNamespace(completion_tokens=0, owner="", prompt_tokens=1500) for i in range(3)}
    assert engine._prefill_step() == llm.PREFILL_STEP  # no pool: no limit
    engine.pool = pool(10**12, 0)
    assert engine._prefill_step() == llm.PREFILL_STEP and engine.pool.reclaims == 0  # plenty of room
    rows = min(3, engine.batch.prefill_batch_size)
    room = memory.prefill_transient_bytes(engine.config, rows=rows, chunk=100, context=1500)
    engine.pool = pool(10**9 + room, 10**9)
    assert engine._prefill_step() == 100  # the longest chunk whose activations fit
    assert engine.pool.reclaims == 1  # short of room: the heap's free pages were asked for first
    engine.pool = pool(10**9, 10**9)
    assert engine._prefill_step() == memory.MIN_MEMORY_CHUNK  # nothing left: the smallest step
    engine.pool = pool(10**9, 10**9, freed=10**9)
    assert engine._prefill_step() == llm.PREFILL_STEP  # what the heap gave back is room again
    engine.pool = None
