"""The vision engine on the tiny LLaVA, in process: images, streaming, cache reuse, queueing."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from inference import protocol as p
from inference.worker.adapters.llm import BadRequest
from inference.worker.adapters.vision import VisionEngine
from inference.worker.testmodels.media import NUM_IMAGE_TOKENS, TINY_LLAVA_NAME

pytestmark = pytest.mark.slow


def picture(color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (50, 40), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def spec(demo_models: dict[str, Path]) -> p.ModelSpec:
    return p.ModelSpec(name="vlm", path=str(demo_models[TINY_LLAVA_NAME]), kind="vision", max_concurrent=2)


def ask(spec: p.ModelSpec, rid: str, content: object, images: list[bytes], tokens: int = 6) -> p.Generate:
    return p.Generate(
        request_id=rid,
        model=spec,
        sampling=p.SamplingParams(max_tokens=tokens, temperature=0.0),
        messages=[{"role": "user", "content": content}],
        images=images,
    )


def run(engine: VisionEngine) -> dict[str, p.Output]:
    """Step until idle; each request's text joined into its final output."""
    texts: dict[str, str] = {}
    finals: dict[str, p.Output] = {}
    while engine.active:
        for _, out in engine.step():
            texts[out.request_id] = texts.get(out.request_id, "") + out.text
            if out.finish_reason:
                finals[out.request_id] = p.Output(out.request_id, texts[out.request_id], out.completion_tokens,
                                                  out.finish_reason, out.prompt_tokens, out.cached_tokens)  # fmt: skip
    return finals


def test_images_become_image_tokens_and_requests_interleave(spec: p.ModelSpec) -> None:
    engine = VisionEngine(spec)
    two = [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}]
    count = engine.count_tokens(
        p.CountTokens(
            request_id="c",
            model=spec,
            messages=[{"role": "user", "content": two}],
            images=[picture("red"), picture("blue")],
        )  # fmt: skip
    )
    plain = engine.count_tokens(
        p.CountTokens(request_id="d", model=spec, messages=[{"role": "user", "content": "Compare"}])
    )
    assert count - plain >= 2 * NUM_IMAGE_TOKENS
    # Three requests, two at a time: the third waits in the queue, then runs.
    engine.add(ask(spec, "a", two, [picture("red"), picture("blue")]), conn=None)
    engine.add(ask(spec, "b", "Hello", []), conn=None)
    engine.add(
        ask(spec, "c", [{"type": "image"}, {"type": "text", "text": "?"}], [picture("green")]), conn=None
    )
    assert engine.stats()["queued_requests"] == 1 and engine.active == 3
    finals = run(engine)
    assert set(finals) == {"a", "b", "c"}
    assert all(f.finish_reason == "length" and f.completion_tokens == 6 for f in finals.values())
    assert finals["a"].prompt_tokens == count
    assert engine.stats()["images"] == 3


def test_a_follow_up_turn_reuses_the_cache_and_answers_the_same(spec: p.ModelSpec) -> None:
    content = [{"type": "image"}, {"type": "text", "text": "What is it?"}]
    images = [picture("red")]
    warm = VisionEngine(spec)
    first = run_one(warm, ask(spec, "1", content, images))
    follow = [{"role": "user", "content": content}, {"role": "assistant", "content": first.text},
              {"role": "user", "content": "Go on."}]  # fmt: skip
    second = p.Generate(request_id="2", model=spec, sampling=p.SamplingParams(max_tokens=6, temperature=0.0),
                        messages=follow, images=images)  # fmt: skip
    cached = run_one(warm, second)
    assert cached.cached_tokens >= first.prompt_tokens - 1
    cold = run_one(VisionEngine(spec), second)
    assert cold.cached_tokens == 0 and cold.text == cached.text  # the cache changes nothing but the time
    # The same words about another image share nothing with the red picture's cache.
    other = run_one(warm, p.Generate(request_id="3", model=spec, sampling=second.sampling, messages=follow,
                                     images=[picture("blue")]))  # fmt: skip
    assert other.cached_tokens < NUM_IMAGE_TOKENS


def run_one(engine: VisionEngine, req: p.Generate) -> p.Output:
    engine.add(req, conn=None)
    return run(engine)[req.request_id]


def test_mismatched_or_broken_images_are_bad_requests(spec: p.ModelSpec) -> None:
    engine = VisionEngine(spec)
    with pytest.raises(BadRequest, match="placed 1 of the 2 images"):
        engine.add(ask(spec, "x", [{"type": "image"}], [picture("red"), picture("blue")]), conn=None)
    with pytest.raises(BadRequest, match="could not be decoded"):
        engine.add(ask(spec, "y", [{"type": "image"}], [b"not an image"]), conn=None)
    assert engine.active == 0


# ---- the batched lane ---------------------------------------------------------------------


def wide(spec: p.ModelSpec, n: int) -> p.ModelSpec:
    return p.ModelSpec(name=spec.name, path=spec.path, kind="vision", max_concurrent=n)


def sampled(req: p.Generate, **sampling: object) -> p.Generate:
    params = p.SamplingParams(**{"max_tokens": req.sampling.max_tokens, "temperature": 0.0, **sampling})  # type: ignore[arg-type]
    return p.Generate(request_id=req.request_id, model=req.model, sampling=params, messages=req.messages,
                      images=req.images, logprobs=req.logprobs)  # fmt: skip


def with_logprobs(req: p.Generate) -> p.Generate:
    return p.Generate(request_id=req.request_id, model=req.model, sampling=req.sampling, messages=req.messages,
                      images=req.images, logprobs=0)  # fmt: skip


def mixed(spec: p.ModelSpec) -> list[p.Generate]:
    """Two images, another image, no image: prompts of different lengths."""
    two = [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}]
    return [
        ask(spec, "a", two, [picture("red"), picture("blue")], tokens=12),
        ask(spec, "b", "Hello there, how are you?", [], tokens=12),
        ask(spec, "c", [{"type": "image"}, {"type": "text", "text": "?"}], [picture("green")], tokens=12),
    ]


def test_requests_decode_together_and_answer_as_each_alone(spec: p.ModelSpec) -> None:
    spec = wide(spec, 4)
    reqs = mixed(spec)
    alone = {r.request_id: run_one(VisionEngine(spec), r).text for r in reqs}
    # The sequential lane (logprobs asked) gives the same text as the batched lane alone.
    assert run_one(VisionEngine(spec), with_logprobs(reqs[0])).text == alone["a"]
    engine = VisionEngine(spec)
    for r in reqs[:2]:
        engine.add(r, conn=None)
    assert len(engine._by_uid) == 2 and not engine._sequential
    texts: dict[str, str] = {}
    widest = 0
    for i in range(100):
        if i == 3:  # a latecomer joins the batch while the others decode
            engine.add(reqs[2], conn=None)
        for _, out in engine.step():
            texts[out.request_id] = texts.get(out.request_id, "") + out.text
        widest = max(widest, len(engine.batch.gen._generation_batch))  # type: ignore[attr-defined]
        if not engine.active:
            break
    assert widest == 3  # one forward pass per step for all three
    assert texts == alone
    assert engine.stats()["tokens_generated"] == 36


def test_a_seeded_sample_is_reproducible_in_a_batch(spec: p.ModelSpec) -> None:
    spec = wide(spec, 4)
    reqs = mixed(spec)
    hot = sampled(reqs[2], temperature=0.9, top_k=40, seed=7)
    alone = run_one(VisionEngine(spec), hot).text
    assert run_one(VisionEngine(spec), hot).text == alone
    # The same request sampled in the sequential lane draws the same tokens.
    assert run_one(VisionEngine(spec), with_logprobs(hot)).text == alone
    engine = VisionEngine(spec)
    greedy = {r.request_id: run_one(VisionEngine(spec), r).text for r in reqs[:2]}
    for r in [*reqs[:2], hot]:
        engine.add(r, conn=None)
    assert len(engine._by_uid) == 3
    finals = run(engine)
    assert finals["c"].text == alone  # its own key and settings, whatever shares the batch
    assert {k: finals[k].text for k in greedy} == greedy  # the greedy rows stay greedy
    other = run_one(VisionEngine(spec), sampled(hot, temperature=0.9, top_k=40, seed=8)).text
    assert other != alone


def test_aborting_one_batched_request_leaves_the_others(spec: p.ModelSpec) -> None:
    spec = wide(spec, 4)
    reqs = mixed(spec)
    alone = {r.request_id: run_one(VisionEngine(spec), r).text for r in reqs}
    engine = VisionEngine(spec)
    conn = object()
    for r in reqs:
        engine.add(r, conn=conn if r.request_id == "b" else None)
    texts: dict[str, str] = {}
    finals: dict[str, p.Output] = {}
    for i in range(100):
        if i == 4:
            assert engine.owned_by(conn) == ["b"] and "b" in texts  # it has been streaming
            assert engine.abort("b") and not engine.abort("b")
            assert engine.active == 2 and engine.owned_by(conn) == []
        for _, out in engine.step():
            assert i < 4 or out.request_id != "b"
            texts[out.request_id] = texts.get(out.request_id, "") + out.text
            if out.finish_reason:
                finals[out.request_id] = out
        if not engine.active:
            break
    assert set(finals) == {"a", "c"} and all(f.completion_tokens == 12 for f in finals.values())
    assert all(texts[k] == alone[k] for k in finals)
    # A failed step drops every request; the engine serves again afterwards.
    engine.add(reqs[0], conn=None)
    engine.add(reqs[1], conn=None)
    engine.step()
    assert {rid for rid, _ in engine.fail_all()} == {"a", "b"} and engine.active == 0
    assert run_one(engine, reqs[2]).text == alone["c"]


def test_max_concurrent_is_honoured_by_the_batch(spec: p.ModelSpec) -> None:
    engine = VisionEngine(spec)  # max_concurrent=2
    reqs = mixed(spec)
    extra = ask(spec, "d", "Another one", [], tokens=12)
    for r in [*reqs, extra]:
        engine.add(r, conn=None)
    assert engine.active == 4 and engine.stats()["queued_requests"] == 2
    finished: set[str] = set()
    while engine.active:
        for _, out in engine.step():
            if out.finish_reason:
                finished.add(out.request_id)
        assert len(engine._by_uid) + len(engine._sequential) <= 2
        assert len(engine.batch.gen._generation_batch) <= 2  # type: ignore[attr-defined]
    assert finished == {"a", "b", "c", "d"}
    # Raised by the next request's profile: the queue drains into the batch at once.
    engine = VisionEngine(spec)
    for r in [*reqs, extra]:
        engine.add(r, conn=None)
    engine.apply_policy(wide(spec, 3))
    assert len(engine._by_uid) == 3 and engine.stats()["queued_requests"] == 1
    engine.apply_policy(wide(spec, 4))
    assert len(engine._by_uid) == 4 and engine.stats()["queued_requests"] == 0
    assert len(run(engine)) == 4


def test_a_stop_string_ends_one_batched_row(spec: p.ModelSpec) -> None:
    spec = wide(spec, 4)
    a, b, _ = mixed(spec)
    alone = {r.request_id: run_one(VisionEngine(spec), r).text for r in (a, b)}
    stop = alone["b"][6:9]
    cut = alone["b"].index(stop)
    engine = VisionEngine(spec)
    engine.add(a, conn=None)
    engine.add(sampled(b, stop=[stop]), conn=None)
    finals = run(engine)
    assert finals["b"].finish_reason == "stop" and finals["b"].text == alone["b"][:cut]
    assert finals["b"].completion_tokens < 12
    assert finals["a"].text == alone["a"] and finals["a"].completion_tokens == 12
    assert engine.active == 0 and not engine._running


def test_a_request_waiting_for_a_free_row_counts_the_wait_as_queued(spec: p.ModelSpec) -> None:
    one = p.ModelSpec(name=spec.name, path=spec.path, kind="vision", max_concurrent=1)
    engine = VisionEngine(one)
    now = time.perf_counter()
    engine.add(ask(one, "first", "hello", []), conn=None, arrived=now)
    engine.add(ask(one, "second", "hello again", []), conn=None, arrived=now)  # waits for the first
    finals: dict[str, p.Output] = {}
    while engine.active:
        finals.update({out.request_id: out for _, out in engine.step() if out.finish_reason})
    first, second = finals["first"], finals["second"]
    assert first.queued_s is not None and first.prefill_s is not None and second.prefill_s is not None
    assert second.queued_s is not None and second.queued_s > first.queued_s + first.prefill_s
    assert not engine._arrivals
