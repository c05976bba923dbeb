"""The scheduler thread on a real tiny model: batching, joining, cancelling, prompt cache."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from inference import protocol as p
from inference.worker.fairness import Limits
from inference.worker.scheduler import Scheduler, _ConnectionClosed

pytestmark = pytest.mark.slow


class Conn:
    """Stands in for a web connection; collects what the scheduler emits."""

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()


@pytest.fixture
def sched() -> Any:
    s = Scheduler(lambda conn, items: [conn.inbox.put(i) for i in items])
    s.start()
    yield s
    s.stop()
    s.join(timeout=10)


def gen(
    rid: str, path: Path, content: str, spec: dict[str, Any] | None = None, **sampling: Any
) -> p.Generate:
    sampling.setdefault("max_tokens", 16)
    sampling.setdefault("temperature", 0.0)
    return p.Generate(
        request_id=rid,
        model=p.ModelSpec(name="tiny-random", path=str(path), **(spec or {})),
        sampling=p.SamplingParams(**sampling),
        messages=[{"role": "user", "content": content}],
    )


def collect(
    conn: Conn, rids: set[str], timeout: float = 60
) -> dict[str, tuple[str, p.Output | p.RequestError]]:
    """Text and final item per request id."""
    texts: dict[str, list[str]] = {r: [] for r in rids}
    done: dict[str, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(rids):
        item = conn.inbox.get(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(item, p.RequestError):
            done[item.request_id] = ("", item)
            continue
        texts[item.request_id].append(item.text)
        if item.finish_reason is not None:
            done[item.request_id] = ("".join(texts[item.request_id]), item)
    return done


def run_one(sched: Scheduler, req: p.Generate) -> tuple[str, p.Output]:
    conn = Conn()
    sched.submit(conn, req)
    text, final = collect(conn, {req.request_id})[req.request_id]
    assert isinstance(final, p.Output)
    return text, final


def test_batched_greedy_equals_unbatched(sched: Scheduler, demo_models: dict[str, Path]) -> None:
    path = demo_models["tiny-random"]
    prompts = {f"r{i}": f"batch prompt {i} " + "xy" * i for i in range(6)}
    solo = {rid: run_one(sched, gen(rid + "-solo", path, c))[0] for rid, c in prompts.items()}
    conn = Conn()
    for rid, c in prompts.items():
        sched.submit(conn, gen(rid, path, c))
    together = collect(conn, set(prompts))
    assert {rid: t for rid, (t, _) in together.items()} == solo
    assert all(f.completion_tokens == 16 for _, f in together.values())


def test_request_joining_mid_batch_gets_its_own_text(sched: Scheduler, demo_models: dict[str, Path]) -> None:
    path = demo_models["tiny-random"]
    expected = run_one(sched, gen("late-solo", path, "the late one"))[0]
    conn = Conn()
    sched.submit(conn, gen("long", path, "a long running one", max_tokens=400))
    first = conn.inbox.get(timeout=30)  # the long request is decoding now
    assert first.request_id == "long"
    sched.submit(conn, gen("late", path, "the late one"))
    results = collect(conn, {"long", "late"})
    assert results["late"][0] == expected
    assert results["long"][1].completion_tokens == 400


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.9, "seed": 7}])
def test_lone_request_moving_into_the_batch_keeps_its_text(
    sched: Scheduler, demo_models: dict[str, Path], sampling: dict[str, Any]
) -> None:
    """A lone request decodes on generate_step; when a second one arrives it joins the batch
    mid-stream, KV cache, sampler and all: its text is what it would have been alone."""
    path = demo_models["tiny-random"]
    alone = run_one(sched, gen("first-alone", path, "the first one", max_tokens=120, **sampling))[0]
    late_alone = run_one(sched, gen("late-alone", path, "the second one", max_tokens=40))[0]
    conn = Conn()
    sched.submit(conn, gen("first", path, "the first one", max_tokens=120, **sampling))
    early: list[str] = []
    while len(early) < 5:  # a few outputs in: it is decoding alone
        item = conn.inbox.get(timeout=30)
        assert item.request_id == "first" and item.finish_reason is None
        early.append(item.text)
    sched.submit(conn, gen("late", path, "the second one", max_tokens=40))
    results = collect(conn, {"first", "late"})
    assert "".join(early) + results["first"][0] == alone
    assert results["first"][1].completion_tokens == 120
    assert results["late"][0] == late_alone


def test_long_prompt_in_short_slices_while_another_decodes(
    sched: Scheduler, demo_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny prefill slice the long prompt advances 64 tokens per step next to a decoding
    request; both texts are what they are alone."""
    from inference.worker.adapters import llm
    from inference.worker.prompt_cache import PromptCache

    path = demo_models["tiny-random"]
    long_text = "a long prompt about many things " * 60
    long_alone = run_one(sched, gen("long-alone", path, long_text, max_tokens=24))[0]
    short_alone = run_one(sched, gen("short-alone", path, "keep talking", max_tokens=200))[0]
    monkeypatch.setattr(llm, "PREFILL_SLICE_S", 1e-6)
    engine = next(iter(sched.pool))
    engine.prompt_cache = PromptCache()  # the long prompt is prefilled again, not found
    steps: list[int] = []
    step = engine._prefill_step
    monkeypatch.setattr(engine, "_prefill_step", lambda: steps.append(step()) or steps[-1])
    conn = Conn()
    sched.submit(conn, gen("short", path, "keep talking", max_tokens=200))
    first = conn.inbox.get(timeout=30)
    assert first.request_id == "short"  # decoding
    sched.submit(conn, gen("long", path, long_text, max_tokens=24))
    results = collect(conn, {"short", "long"})
    assert results["long"][0] == long_alone and first.text + results["short"][0] == short_alone
    long_final = results["long"][1]
    assert isinstance(long_final, p.Output) and long_final.cached_tokens == 0
    assert long_final.prompt_tokens > llm.PREFILL_STEP  # batched (and its prefill rate measured) alone
    assert llm.PREFILL_MIN_STEP in steps  # the long prompt was cut into minimal slices


def test_aborting_a_lone_request(sched: Scheduler, demo_models: dict[str, Path]) -> None:
    path = demo_models["tiny-random"]
    conn = Conn()
    sched.submit(conn, gen("gone", path, "stop me", max_tokens=100_000))
    assert conn.inbox.get(timeout=30).request_id == "gone"
    sched.submit(conn, p.Abort(request_id="gone"))
    deadline = time.monotonic() + 10
    while sched.snapshot["active_requests"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sched.snapshot["active_requests"] == 0
    text, final = run_one(sched, gen("after", path, "next one", max_tokens=8))
    assert final.finish_reason == "length" and final.completion_tokens == 8


def test_cancelling_one_leaves_the_others_intact(sched: Scheduler, demo_models: dict[str, Path]) -> None:
    path = demo_models["tiny-random"]
    expected = run_one(sched, gen("keep-solo", path, "keep me", max_tokens=64))[0]
    conn = Conn()
    sched.submit(conn, gen("victim", path, "cancel me", max_tokens=100_000))
    sched.submit(conn, gen("keep", path, "keep me", max_tokens=64))
    sched.submit(conn, p.Abort(request_id="victim"))
    text, final = collect(conn, {"keep"})["keep"]
    assert text == expected and final.finish_reason == "length"
    deadline = time.monotonic() + 10
    while sched.snapshot["active_requests"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sched.snapshot["active_requests"] == 0


def test_prompt_cache_hit_gives_same_text_and_counts_cached_tokens(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["tiny-random"]
    system = "You are a helpful assistant. " * 20
    req = gen("cold", path, "question one", max_tokens=12)
    req = p.Generate(
        request_id="cold",
        model=req.model,
        sampling=req.sampling,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "question one"}],
    )
    cold_text, cold = run_one(sched, req)
    assert cold.cached_tokens == 0
    warm_req = p.Generate(request_id="warm", model=req.model, sampling=req.sampling, messages=req.messages)
    warm_text, warm = run_one(sched, warm_req)
    assert warm_text == cold_text
    # Everything but the last prompt token comes from the cache.
    assert warm.cached_tokens == warm.prompt_tokens - 1
    # A different question sharing the system prompt reuses the common prefix.
    other = p.Generate(
        request_id="other",
        model=req.model,
        sampling=req.sampling,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "question two"}],
    )
    _, o = run_one(sched, other)
    assert 0 < o.cached_tokens < o.prompt_tokens
    assert o.cached_tokens > len(system) // 10  # the long system prompt was not recomputed


def test_two_models_interleave(sched: Scheduler, demo_models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    # A second copy of the tiny model is a second pool entry (the pool keys by path).
    other = tmp_path / "tiny-copy"
    shutil.copytree(demo_models["tiny-random"], other)
    conn = Conn()
    sched.submit(conn, gen("a", demo_models["tiny-random"], "model a", max_tokens=200))
    sched.submit(conn, gen("b", other, "model b", max_tokens=200))
    order = []
    finished = set()
    while len(finished) < 2:
        item = conn.inbox.get(timeout=60)
        assert isinstance(item, p.Output)
        order.append(item.request_id)
        if item.finish_reason:
            finished.add(item.request_id)
    # Neither starves: both make progress in the first half of all frames.
    half = order[: len(order) // 2]
    assert "a" in half and "b" in half


def test_bad_model_path_is_a_clean_error(sched: Scheduler, tmp_path: Path) -> None:
    conn = Conn()
    sched.submit(conn, gen("x", tmp_path / "missing", "hi"))
    _, err = collect(conn, {"x"})["x"]
    assert isinstance(err, p.RequestError)
    assert err.code == p.ERR_MODEL_LOAD


def test_speculative_decoding_matches_plain_greedy(sched: Scheduler, demo_models: dict[str, Path]) -> None:
    path = demo_models["tiny-random"]
    plain, _ = run_one(sched, gen("plain", path, "speculate", max_tokens=40))
    spec = {"draft_path": str(path), "num_draft_tokens": 3}
    text, final = run_one(sched, gen("spec", path, "speculate", spec, max_tokens=40))
    assert text == plain
    assert final.completion_tokens == 40 and final.finish_reason == "length"
    engines = [m for m in sched.snapshot["models"] if m["speculative"]] or None
    deadline = time.monotonic() + 5
    while engines is None and time.monotonic() < deadline:
        time.sleep(0.1)
        engines = [m for m in sched.snapshot["models"] if m["speculative"]] or None
    assert engines


def test_quantized_kv_requests_are_served_one_at_a_time(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["smollm2-135m-instruct"]  # head_dim 64: quantizable KV
    conn = Conn()
    for i in range(3):
        sched.submit(conn, gen(f"kv{i}", path, f"Count to {i + 3}.", {"kv_bits": 8}, max_tokens=4))
    results = collect(conn, {"kv0", "kv1", "kv2"}, timeout=120)
    assert all(isinstance(f, p.Output) and f.completion_tokens >= 1 for _, f in results.values())
    assert [m["kv_bits"] for m in sched.snapshot["models"]] == [8]


def test_kv_bits_on_an_unquantizable_model_is_a_clean_error(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    conn = Conn()
    sched.submit(conn, gen("kvbad", demo_models["tiny-random"], "x", {"kv_bits": 4}))
    _, err = collect(conn, {"kvbad"})["kvbad"]
    assert isinstance(err, p.RequestError) and "head dimension" in err.message


def test_stop_string_reports_which_one(sched: Scheduler, demo_models: dict[str, Path]) -> None:
    path = demo_models["tiny-random"]
    full, _ = run_one(sched, gen("full", path, "stops", max_tokens=30))
    stop = full[8:11]
    text, final = run_one(sched, gen("cut", path, "stops", max_tokens=30, stop=["zzzzqqq", stop]))
    assert final.finish_reason == "stop" and final.stop_sequence == stop
    assert text == full[: full.index(stop)]


def test_count_tokens_matches_the_generation_prompt(sched: Scheduler, demo_models: dict[str, Path]) -> None:
    req = gen("counted", demo_models["tiny-random"], "count me\n- please", max_tokens=2)
    _, final = run_one(sched, req)
    conn = Conn()
    sched.submit(conn, p.CountTokens(request_id="c", model=req.model, messages=req.messages))
    assert conn.inbox.get(timeout=30) == p.TokenCount(request_id="c", input_tokens=final.prompt_tokens)

    missing = p.ModelSpec(name="gone", path="/nonexistent/model")
    sched.submit(conn, p.CountTokens(request_id="m", model=missing, messages=req.messages))
    err = conn.inbox.get(timeout=30)
    assert isinstance(err, p.RequestError) and err.code == p.ERR_MODEL_LOAD


def _logprobs(sched: Scheduler, req: p.Generate) -> list[p.TokenLogprob]:
    conn = Conn()
    sched.submit(conn, req)
    items: list[p.TokenLogprob] = []
    while True:
        out = conn.inbox.get(timeout=60)
        assert isinstance(out, p.Output)
        items += out.logprobs or []
        if out.finish_reason is not None:
            assert out.completion_tokens == len(items)
            return items


def test_logprobs_in_the_batch_and_the_sequential_lane(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["tiny-random"]
    batched = _logprobs(sched, msgspec.structs.replace(gen("lp", path, "hello", max_tokens=12), logprobs=4))
    assert len(batched) == 12
    for t in batched:  # greedy: the chosen token is the most likely one
        assert len(t.top) == 4 and t.top[0].logprob == pytest.approx(t.logprob)
        assert [a.logprob for a in t.top] == sorted((a.logprob for a in t.top), reverse=True)
    spec = {"draft_path": str(path), "num_draft_tokens": 3}
    speculative = _logprobs(
        sched, msgspec.structs.replace(gen("lp2", path, "hello", spec, max_tokens=12), logprobs=0)
    )
    assert [t.token for t in speculative] == [t.token for t in batched]
    assert [t.logprob for t in speculative] == pytest.approx([t.logprob for t in batched], abs=1e-3)
    assert all(t.top == [] for t in speculative)


def test_the_final_output_times_the_wait_from_the_requests_arrival(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    """queued_s counts from `submit` (the I/O thread), so it covers the model's load here."""
    path = demo_models["tiny-random"]
    conn = Conn()
    sched.submit(conn, gen("timed", path, "how long did I wait"))
    _, final = collect(conn, {"timed"})["timed"]
    assert isinstance(final, p.Output)
    assert final.queued_s is not None and final.prefill_s is not None
    assert final.queued_s > 0 and final.prefill_s > 0
    assert not sched._arrived


# ---- fair turns between users (inference/worker/fairness.py) ----------------------------


class Driven:
    """A scheduler driven round by round on the test's thread: deterministic step counts."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.sched = Scheduler(
            lambda conn, items: [conn.inbox.put(i) for i in items], limits=limits or Limits()
        )

    def send(self, conn: Conn, msg: Any) -> None:
        self.sched.handle(conn, msg)

    def until(self, done: Any, max_rounds: int = 10_000) -> int:
        """Rounds run until `done()` holds."""
        for n in range(max_rounds):
            if done():
                return n
            self.sched.round()
        raise AssertionError(f"not done after {max_rounds} rounds")

    def close(self) -> None:
        for engine in self.sched.pool:
            engine.close()


@pytest.fixture
def driven() -> Any:
    made: list[Driven] = []

    def make(limits: Limits | None = None) -> Driven:
        made.append(Driven(limits))
        return made[-1]

    yield make
    for d in made:
        d.close()


def drained(conn: Conn) -> list[Any]:
    items = []
    while not conn.inbox.empty():
        items.append(conn.inbox.get())
    return items


def of_user(
    rid: str, path: Path, user: str, spec: dict[str, Any] | None = None, **sampling: Any
) -> p.Generate:
    req = gen(rid, path, f"{user} asks {rid}", spec, **sampling)
    return msgspec.structs.replace(req, user=user, key=f"k-{user}")


def test_another_users_request_is_not_stuck_behind_a_flood(driven: Any, demo_models: dict[str, Path]) -> None:
    """User a holds 16 requests on a model with 2 rows; b's request, sent after all of them,
    starts as soon as a row frees: within one request's rounds, not after a's 16."""
    path, spec, tokens = demo_models["tiny-random"], {"max_concurrent": 2}, 12
    d = driven()
    conn_a, conn_b = Conn(), Conn()
    for i in range(16):
        d.send(conn_a, of_user(f"a{i}", path, "a", spec, max_tokens=tokens))
    engine = next(iter(d.sched.pool))
    assert engine.active == 2 and d.sched.waiting == 14  # the batch holds only its 2 rows
    d.send(conn_b, of_user("b0", path, "b", spec, max_tokens=tokens))
    assert d.sched.waiting == 15
    d.sched._refresh_snapshot()  # what /healthz and the pool page show
    (model,) = d.sched.snapshot["models"]
    assert model["queued_requests"] == 15 and model["active_requests"] == 2

    rows: list[int] = []

    def b_started() -> bool:
        rows.append(engine.active)
        return "b0" in d.sched._running

    rounds = d.until(b_started)
    # A row frees when one of a's first two requests ends: at most its prefill and `tokens`
    # decode steps. First come, first served would have run 14 more of a's requests first.
    assert rounds <= tokens + 2
    assert max(rows) <= 2
    assert d.sched.waiting >= 13  # at most one of a's waiting requests went before b's
    d.until(lambda: not d.sched.waiting and not engine.active)
    done = collect(conn_b, {"b0"})
    assert isinstance(done["b0"][1], p.Output) and done["b0"][1].completion_tokens > 0
    finals = [i for i in drained(conn_a) if isinstance(i, p.Output) and i.finish_reason]
    assert sorted(o.request_id for o in finals) == sorted(f"a{i}" for i in range(16))
    assert not d.sched._per_lane and not d.sched._queues


def test_with_free_rows_the_prefill_slots_take_turns(driven: Any, demo_models: dict[str, Path]) -> None:
    """With rows to spare (max_concurrent 32), what the batch would prefill first come, first
    served (8 prompts at a time) waits in the fair queue, and one user holds at most half of
    the prefill slots: b's request, sent after a's 16, starts among the first of the next
    slots, not after a's other 12."""
    path = demo_models["tiny-random"]
    d = driven()
    conn_a, conn_b = Conn(), Conn()
    for i in range(16):
        d.send(conn_a, of_user(f"a{i}", path, "a", max_tokens=8))
    engine = next(iter(d.sched.pool))
    assert engine.batch.prefill_batch_size == 8 and engine.active == 4 and d.sched.waiting == 12
    d.send(conn_b, of_user("b0", path, "b", max_tokens=8))
    rounds = d.until(lambda: "b0" in d.sched._running)
    first = {f"a{i}" for i in range(4)}
    later = [rid for rid in d.sched._running if rid not in first]  # in the order they started
    # First come, first served would have started a4..a15 first: b0 is first or second.
    assert rounds <= 3 and later.index("b0") <= 1
    d.until(lambda: not d.sched.waiting and not engine.active)
    assert isinstance(collect(conn_b, {"b0"})["b0"][1], p.Output)


def test_one_user_leaves_a_row_free_for_another(driven: Any, demo_models: dict[str, Path]) -> None:
    """A batch of 4 rows: user a's 6 endless requests prefill 2 at a time (half of the prefill
    slots) and take 3 rows (one stays free for someone else), so b's request starts in the
    next round, not when one of a's ends."""
    path, spec = demo_models["tiny-random"], {"max_concurrent": 4}
    d = driven()
    conn_a, conn_b = Conn(), Conn()
    for i in range(6):
        d.send(conn_a, of_user(f"a{i}", path, "a", spec, max_tokens=100_000))
    engine = next(iter(d.sched.pool))
    assert engine.active == 2  # half of the 4 prefill slots at first
    d.until(lambda: engine.active == 3)
    for _ in range(5):  # the fourth row stays free while a's others wait
        d.sched.round()
    assert engine.active == 3 and d.sched.waiting == 3
    d.send(conn_b, of_user("b0", path, "b", spec, max_tokens=4))
    assert d.until(lambda: "b0" in d.sched._running) <= 1
    assert sum(1 for rid in d.sched._running if rid.startswith("a")) == 3
    d.until(lambda: "b0" not in d.sched._running)
    assert isinstance(collect(conn_b, {"b0"})["b0"][1], p.Output)
    for i in range(6):
        d.send(conn_a, p.Abort(request_id=f"a{i}"))
    d.until(lambda: not d.sched.waiting and not engine.active)


def test_a_full_queue_refuses_with_a_retry_after(driven: Any, demo_models: dict[str, Path]) -> None:
    path, spec = demo_models["tiny-random"], {"max_concurrent": 1}
    d = driven(Limits(max_queue=1))
    conn = Conn()
    d.send(conn, of_user("run", path, "a", spec, max_tokens=100_000))
    d.send(conn, of_user("wait", path, "b", spec, max_tokens=4))
    d.send(conn, of_user("refused", path, "c", spec, max_tokens=4))
    (err,) = [i for i in drained(conn) if isinstance(i, p.RequestError)]
    assert err.request_id == "refused" and err.code == p.ERR_QUEUE_FULL
    assert err.retry_after is not None and err.retry_after >= 1
    assert "MLXM_MAX_QUEUE" in err.message
    d.send(conn, p.Abort(request_id="run"))
    d.until(lambda: "wait" in d.sched._running)


def test_one_user_beyond_their_share_is_refused_others_are_not(
    driven: Any, demo_models: dict[str, Path]
) -> None:
    path, spec = demo_models["tiny-random"], {"max_concurrent": 1}
    d = driven(Limits(max_user=2))
    conn = Conn()
    for rid in ("a0", "a1", "a2"):
        d.send(conn, of_user(rid, path, "a", spec, max_tokens=100_000))
    d.send(conn, of_user("b0", path, "b", spec, max_tokens=4))
    (err,) = [i for i in drained(conn) if isinstance(i, p.RequestError)]
    assert err.request_id == "a2" and err.code == p.ERR_QUEUE_FULL and err.retry_after
    assert "MLXM_MAX_USER_CONCURRENT" in err.message
    assert d.sched.waiting == 2  # a1 and b0


def test_a_client_gone_while_queued_frees_its_place(driven: Any, demo_models: dict[str, Path]) -> None:
    path, spec = demo_models["tiny-random"], {"max_concurrent": 1}
    d = driven(Limits(max_queue=1))
    running, leaving, aborting, later = Conn(), Conn(), Conn(), Conn()
    d.send(running, of_user("run", path, "a", spec, max_tokens=100_000))
    d.send(leaving, of_user("left", path, "b", spec, max_tokens=4))
    assert d.sched.waiting == 1
    d.send(leaving, _ConnectionClosed(leaving))  # what the I/O loop sends when it closes
    assert d.sched.waiting == 0 and not d.sched._per_lane.get(((str(path), None, 3, None), "b"))
    d.send(aborting, of_user("aborted", path, "c", spec, max_tokens=4))
    assert d.sched.waiting == 1  # the place is free again
    d.send(aborting, p.Abort(request_id="aborted"))
    assert d.sched.waiting == 0
    d.send(later, of_user("later", path, "d", spec, max_tokens=4))
    assert d.sched.waiting == 1 and not drained(later)
    assert not drained(leaving) and not drained(aborting)  # gone: nothing is sent to them
    d.send(running, p.Abort(request_id="run"))
    d.until(lambda: "later" in d.sched._running)


def test_a_request_waiting_too_long_ends_with_queue_timeout(
    driven: Any, demo_models: dict[str, Path]
) -> None:
    path, spec = demo_models["tiny-random"], {"max_concurrent": 1}
    d = driven(Limits(timeout_s=1e-9))
    conn = Conn()
    d.send(conn, of_user("run", path, "a", spec, max_tokens=100_000))
    d.send(conn, of_user("late", path, "b", spec, max_tokens=4))
    d.sched.round()
    errors = [i for i in drained(conn) if isinstance(i, p.RequestError)]
    assert [(e.request_id, e.code) for e in errors] == [("late", p.ERR_QUEUE_TIMEOUT)]
    assert "MLXM_QUEUE_TIMEOUT" in errors[0].message and d.sched.waiting == 0
    assert "run" in d.sched._running


def test_a_queued_request_with_a_bad_prompt_is_refused_at_once(
    driven: Any, demo_models: dict[str, Path]
) -> None:
    path, spec = demo_models["tiny-random"], {"max_concurrent": 1, "context_length": 64}
    d = driven()
    conn = Conn()
    d.send(conn, of_user("run", path, "a", spec, max_tokens=4))
    d.send(
        conn,
        msgspec.structs.replace(
            of_user("long", path, "b", spec), messages=[{"role": "user", "content": "word " * 200}]
        ),
    )
    (err,) = [i for i in drained(conn) if isinstance(i, p.RequestError)]
    assert err.request_id == "long" and err.code == p.ERR_BAD_REQUEST and "context length" in err.message
    assert d.sched.waiting == 0


def test_image_requests_wait_their_turn_and_then_run(driven: Any, demo_models: dict[str, Path]) -> None:
    """An image request queues on an estimate of its cost (its images are encoded when it starts)."""
    import io

    from PIL import Image

    from inference.worker.testmodels.media import TINY_LLAVA_NAME

    out = io.BytesIO()
    Image.new("RGB", (50, 40), "red").save(out, "PNG")
    spec = p.ModelSpec(name="vlm", path=str(demo_models[TINY_LLAVA_NAME]), kind="vision", max_concurrent=1)
    d = driven()
    conn = Conn()
    for user in ("a", "b"):
        d.send(conn, p.Generate(
            request_id=user, model=spec, sampling=p.SamplingParams(max_tokens=4, temperature=0.0), user=user,
            messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image"}]}],
            images=[out.getvalue()],
        ))  # fmt: skip
    assert d.sched.waiting == 1
    d.until(lambda: not d.sched.waiting and not d.sched._running)
    finals = [i for i in drained(conn) if getattr(i, "finish_reason", None)]
    assert sorted(f.request_id for f in finals) == ["a", "b"]
    assert finals[0].prompt_tokens == finals[1].prompt_tokens > 0


def test_configure_changes_the_queue_limits_and_memory_of_a_running_scheduler(
    driven: Any, demo_models: dict[str, Path]
) -> None:
    """The Settings page's `Configure`: the next admission follows the new limits."""
    path, spec = demo_models["tiny-random"], {"max_concurrent": 1}
    d = driven()
    conn = Conn()
    d.send(conn, of_user("run", path, "a", spec, max_tokens=100_000))
    d.send(conn, of_user("waits", path, "b", spec, max_tokens=4))  # no limit yet: it waits
    assert d.sched.waiting == 1 and not [i for i in drained(conn) if isinstance(i, p.RequestError)]

    d.send(conn, p.Configure(request_id="cfg", max_queue=1, memory_limit_bytes=3 << 30,
                             prompt_cache_bytes=64 << 20))  # fmt: skip
    (reply,) = [i for i in drained(conn) if isinstance(i, p.PoolReply)]
    assert reply.request_id == "cfg" and "at most 1 waiting per model" in reply.message
    assert d.sched.limits == Limits(max_queue=1) and d.sched.pool.memory_limit == 3 << 30
    assert d.sched.pool.prompt_cache_bytes == 64 << 20
    d.send(conn, of_user("refused", path, "c", spec, max_tokens=4))
    (err,) = [i for i in drained(conn) if isinstance(i, p.RequestError)]
    assert err.request_id == "refused" and err.code == p.ERR_QUEUE_FULL

    d.send(conn, p.Configure(request_id="cfg2"))  # limits sent whole: none now
    drained(conn)
    d.send(conn, of_user("waits-too", path, "c", spec, max_tokens=4))
    assert d.sched.waiting == 2 and not [i for i in drained(conn) if isinstance(i, p.RequestError)]
    d.send(conn, p.Abort(request_id="run"))
    d.until(lambda: not d.sched.waiting)
