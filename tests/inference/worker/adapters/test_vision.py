"""The vision engine on the tiny LLaVA, in process: images, streaming, cache reuse, queueing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from inference import protocol as p
from inference.worker.adapters.llm import BadRequest
from inference.worker.adapters.vision import VisionEngine
from inference.worker.media_models import NUM_IMAGE_TOKENS, TINY_LLAVA_NAME

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
