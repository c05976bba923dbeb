"""End to end: the official `openai` SDK against the live gateway (uvicorn + worker)."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import openai
import pytest

from tests.conftest import Gateway, manage

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

TINY = "tiny-random"
SMOL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def chat_text(gw: Gateway, **kw: object) -> tuple[str, str, object]:
    r = gw.openai().chat.completions.create(**kw)  # type: ignore[call-overload]
    return r.choices[0].message.content, r.choices[0].finish_reason, r.usage


def tiny(gw: Gateway, content: str = "hello there", **kw: object) -> tuple[str, str, object]:
    kw.setdefault("max_tokens", 24)
    return chat_text(gw, model=TINY, messages=[{"role": "user", "content": content}], **kw)


# ---- the spine: a real answer from a real model -------------------------------------


def test_models_lists_profiles(gateway: Gateway) -> None:
    ids = [m.id for m in gateway.openai().models.list()]
    assert SMOL in ids and TINY in ids


def test_smollm2_answers_non_streaming(gateway: Gateway) -> None:
    r = gateway.openai().chat.completions.create(model=SMOL, messages=FRANCE, max_tokens=20, temperature=0)
    assert r.object == "chat.completion"
    assert r.model == SMOL
    assert r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    assert r.usage.prompt_tokens > 10
    assert 0 < r.usage.completion_tokens <= 20
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_smollm2_streams_with_usage(gateway_on: Gateway) -> None:
    """Under each supported web server (uvicorn, daphne)."""
    stream = gateway_on.openai().chat.completions.create(
        model=SMOL,
        messages=FRANCE,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_ends_with_done_and_no_usage_unless_asked(gateway: Gateway) -> None:
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
    r = httpx.post(
        gateway.v1 + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {gateway.key}"},
        timeout=60,
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all('"usage"' not in e for e in events[:-1])


def test_text_completions_stream_and_not(gateway: Gateway) -> None:
    client = gateway.openai()
    r = client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=TINY, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == r.choices[0].text


# ---- batching -----------------------------------------------------------------------


def test_eight_concurrent_streams_each_get_their_own_text(gateway: Gateway) -> None:
    prompts = [f"prompt number {i}: {'abc' * i}" for i in range(8)]
    solo = [tiny(gateway, p, temperature=0)[0] for p in prompts]

    async def run_all() -> list[str]:
        client = gateway.async_openai()

        async def one(p: str) -> str:
            stream = await client.chat.completions.create(
                model=TINY,
                messages=[{"role": "user", "content": p}],
                max_tokens=24,
                temperature=0,
                stream=True,
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        return await asyncio.gather(*(one(p) for p in prompts))

    together = asyncio.run(run_all())
    assert together == solo
    assert len(set(together)) > 1


def test_client_disconnect_frees_the_slot(gateway: Gateway) -> None:
    client = gateway.openai()
    stream = client.chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "go on forever"}], max_tokens=100_000, stream=True
    )
    for seen, _ in enumerate(stream):
        if seen >= 4:
            break
    stream.close()
    deadline = time.monotonic() + 30
    active = None
    while time.monotonic() < deadline:
        active = gateway.health().json()["worker"]["active_requests"]
        if active == 0:
            break
        time.sleep(0.2)
    assert active == 0


# ---- every sampling parameter has an observable effect --------------------------------


def test_max_tokens_bounds(gateway: Gateway) -> None:
    _, finish, usage = tiny(gateway, max_tokens=7)
    assert finish == "length" and usage.completion_tokens == 7


def test_temperature_zero_is_deterministic_and_sampling_varies(gateway: Gateway) -> None:
    assert tiny(gateway, temperature=0)[0] == tiny(gateway, temperature=0)[0]
    samples = {tiny(gateway, temperature=1.5)[0] for _ in range(4)}
    assert len(samples) > 1


def test_seed_reproduces(gateway: Gateway) -> None:
    a = tiny(gateway, temperature=1.0, seed=42)[0]
    b = tiny(gateway, temperature=1.0, seed=42)[0]
    c = tiny(gateway, temperature=1.0, seed=43)[0]
    assert a == b
    assert a != c


def test_top_k_top_p_min_p_narrow_to_greedy(gateway: Gateway) -> None:
    greedy = tiny(gateway, temperature=0)[0]
    assert tiny(gateway, temperature=1.5, extra_body={"top_k": 1}, seed=1)[0] == greedy
    assert tiny(gateway, temperature=1.5, top_p=0.0001, seed=2)[0] == greedy
    assert tiny(gateway, temperature=1.5, extra_body={"min_p": 1.0}, seed=3)[0] == greedy


def test_stop_stops(gateway: Gateway) -> None:
    full, _, _ = tiny(gateway, temperature=0, max_tokens=30)
    stop = full[10:13]
    cut, finish, _ = tiny(gateway, temperature=0, max_tokens=30, stop=[stop])
    assert finish == "stop"
    assert cut == full[: full.index(stop)]
    assert stop not in cut


def test_logit_bias_forces_a_token(gateway: Gateway, demo_models: dict) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(demo_models[TINY] / "tokenizer.json"))
    q = tok.token_to_id("Q")
    assert tok.decode([q]) == "Q"
    text, _, _ = tiny(gateway, temperature=0, max_tokens=6, logit_bias={str(q): 100})
    assert text == "QQQQQQ"


def test_penalties_change_greedy_output(gateway: Gateway) -> None:
    greedy = tiny(gateway, temperature=0, max_tokens=40)[0]
    assert tiny(gateway, temperature=0, max_tokens=40, extra_body={"repetition_penalty": 1.8})[0] != greedy
    assert tiny(gateway, temperature=0, max_tokens=40, presence_penalty=2.0)[0] != greedy
    assert tiny(gateway, temperature=0, max_tokens=40, frequency_penalty=2.0)[0] != greedy


# ---- bad input: clear errors in OpenAI's shape ----------------------------------------


def test_unknown_parameter_is_refused_by_name(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        tiny(gateway, extra_body={"frobnicate": 1})
    assert exc.value.status_code == 400
    assert "frobnicate" in exc.value.message
    assert exc.value.body["param"] == "frobnicate"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"},
            "tool_choice",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format"),
    ],
)
def test_unsupported_parameters_are_refused_not_ignored(gateway: Gateway, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        tiny(gateway, extra_body=extra)
    assert exc.value.body["param"] == param


def test_logprobs_chat_streamed_and_not(gateway: Gateway) -> None:
    client = gateway.openai()
    kw: dict = {"model": SMOL, "messages": FRANCE, "max_tokens": 8, "temperature": 0, "logprobs": True,
                "top_logprobs": 3}  # fmt: skip
    r = client.chat.completions.create(**kw)
    choice = r.choices[0]
    assert choice.logprobs is not None and r.usage is not None
    tokens = choice.logprobs.content or []
    eos = choice.finish_reason == "stop"  # the end-of-sequence token is no text: it has no entry
    assert len(tokens) == r.usage.completion_tokens - eos > 3
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert t.logprob <= 0 and t.bytes == list(t.token.encode())
        alts = [a.logprob for a in t.top_logprobs]
        assert len(alts) == 3 and alts == sorted(alts, reverse=True)
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob  # greedy
    stream = client.chat.completions.create(**kw, stream=True)
    streamed = [
        t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in tokens]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in tokens], abs=1e-3)
    plain = client.chat.completions.create(model=SMOL, messages=FRANCE, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_logprobs_text_completions(gateway: Gateway) -> None:
    client = gateway.openai()
    r = client.completions.create(model=TINY, prompt="hello", max_tokens=6, logprobs=2)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    for alts, value in zip(lp.top_logprobs, lp.token_logprobs, strict=True):
        # (two alternatives that decode to the same text share a key)
        assert 1 <= len(alts) <= 2 and value <= max(alts.values()) <= 0
    assert lp.text_offset == sorted(lp.text_offset)
    chunks = list(
        client.completions.create(model=TINY, prompt="hello", max_tokens=6, logprobs=0, stream=True)
    )
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens or []
    ]
    assert len(streamed) == 6


def test_echo_on_text_completions(gateway: Gateway) -> None:
    client = gateway.openai()
    prompt = "The capital of France is"
    r = client.completions.create(model=SMOL, prompt=prompt, max_tokens=5, temperature=0, echo=True)
    plain = client.completions.create(model=SMOL, prompt=prompt, max_tokens=5, temperature=0)
    assert r.choices[0].text == prompt + plain.choices[0].text and plain.choices[0].text
    chunks = list(client.completions.create(model=SMOL, prompt=prompt, max_tokens=5, temperature=0, echo=True,
                                            stream=True))  # fmt: skip
    assert chunks[0].choices[0].text == prompt
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=SMOL, prompt=prompt, max_tokens=5, echo=True, logprobs=1)
    assert exc.value.body["param"] == "echo"  # type: ignore[index]


def test_unknown_model_is_404(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        chat_text(gateway, model="no-such-model", messages=FRANCE)
    assert exc.value.body["code"] == "model_not_found"


def post(gw: Gateway, content: bytes | str, **headers: str) -> httpx.Response:
    h = {"Authorization": f"Bearer {gw.key}", "Content-Type": "application/json", **headers}
    return httpx.post(gw.v1 + "/chat/completions", content=content, headers=h, timeout=60)


def test_bad_json_wrong_types_and_huge_bodies(gateway: Gateway) -> None:
    r = post(gateway, b"{not json")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"

    r = post(
        gateway,
        '{"model": "tiny-random", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "temperature"

    r = post(gateway, '{"model": "tiny-random", "messages": "not a list"}')
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")

    r = post(gateway, '{"model": "tiny-random", "messages": []}')
    assert r.status_code == 400

    r = post(
        gateway,
        b'{"model": "tiny-random", "messages": [{"role": "user", "content": "'
        + b"x" * (33 * 1024 * 1024)
        + b'"}]}',
    )
    assert r.status_code == 413
    assert "too large" in r.json()["error"]["message"]


def test_auth_required(gateway: Gateway) -> None:
    body = '{"model": "tiny-random", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}'
    r = httpx.post(gateway.v1 + "/chat/completions", content=body, timeout=30)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(gateway.v1 + "/models", headers={"Authorization": "Bearer mlxm-wrong"}, timeout=30)
    assert r.status_code == 401
    r = httpx.get(gateway.v1 + "/models", headers={"x-api-key": gateway.key}, timeout=30)
    assert r.status_code == 200


def test_healthz(gateway: Gateway) -> None:
    body = gateway.health().json()
    assert body["status"] == "ok"
    assert body["worker"]["state"] == "up"
    assert isinstance(body["worker"]["queue_depth"], int)
    assert isinstance(body["worker"]["loaded_models"], list)
    tiny(gateway, max_tokens=4)
    worker = gateway.health().json()["worker"]
    # The memory limit's parts: the process's own (its runtime, the disk tier's pending copies,
    # the headroom), weights, live KV caches, prompt caches; MLX's own counts.
    mem = worker["memory"]
    assert mem["weights_bytes"] > 0 and mem["limit_bytes"] > 0
    assert 0 < mem["runtime_bytes"] <= mem["rss_bytes"]
    assert mem["headroom_bytes"] == mem["limit_bytes"] * 5 // 100  # MLXM_MEMORY_HEADROOM's default
    parts = ("runtime_bytes", "disk_pending_bytes", "headroom_bytes", "weights_bytes", "kv_bytes",
             "prompt_cache_bytes")  # fmt: skip
    assert mem["used_bytes"] == sum(mem[k] for k in parts)
    assert mem["free_bytes"] == mem["limit_bytes"] - mem["used_bytes"]
    assert mem["mlx_peak_bytes"] >= mem["mlx_active_bytes"] > 0 and mem["rss_bytes"] > 0
    model = next(m for m in worker["loaded_models"] if m["name"] == TINY)
    assert model["weights_form"] == "float32" and model["kv_bytes"] >= 0
    # Prompt tokens and where the cached ones came from (benchmarks/bench_team.py reads these).
    assert model["prompt_tokens"] >= model["cache_hit_tokens"] >= model["disk_hit_tokens"] >= 0


# ---- resilience ----------------------------------------------------------------------


def test_worker_killed_mid_stream_recovers(own_gateway: Gateway) -> None:
    import signal

    gw = own_gateway
    # A profile marked "preload at start" must come back with the restarted worker.
    env = {**os.environ, "MLXM_DATA_DIR": str(gw.data_dir), "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}
    env.pop("DATABASE_URL", None)
    manage(
        "shell", "-c", "from mlxmanager.profiles.models import Profile; "
        f"Profile.objects.filter(name={TINY!r}).update(preload=True)", env=env,
    )  # fmt: skip
    pid = gw.worker_pid()
    stream = gw.openai().chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "long"}], max_tokens=100_000, stream=True
    )
    with pytest.raises(openai.APIError) as exc:
        for n, _ in enumerate(stream):
            if n == 3:
                os.kill(pid, signal.SIGKILL)
    assert "worker" in str(exc.value.message)

    # While it restarts, requests get a clean 503 (or succeed once it is back).
    body = gw.wait_healthy(timeout=60)
    assert body["worker"]["pid"] != pid
    deadline = time.monotonic() + 60
    while TINY not in [m["name"] for m in gw.health().json()["worker"]["loaded_models"]]:
        assert time.monotonic() < deadline, "the preloaded profile did not come back"
        time.sleep(0.2)
    text, finish, _ = tiny(gw, max_tokens=5)
    assert finish == "length" and text


def test_a_request_whose_kv_cache_cannot_fit_is_a_clear_503(
    demo_models: dict, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[type-arg]
    """Under a memory limit just above the weights, a short request is served and a long one
    (its KV cache alone passes the limit) gets 503 saying what it needs, never a dead worker."""
    from inference.worker import memory
    from tests.conftest import start_gateway, stop_gateway

    path = demo_models[TINY]
    weights = memory.weight_sizes(path, float32=True).loaded_bytes
    per_token = memory.kv_bytes_per_token(memory.read_config(path), 4)
    monkeypatch.setenv("MLXM_MEMORY_LIMIT", str(weights + per_token * 600))
    # The KV caches alone against the limit: the process's own memory (tens of MB, changing
    # under load) would drown this tiny model's KV (under 1 MB for 1,500 tokens).
    monkeypatch.setenv("MLXM_MEMORY_COUNT_PROCESS", "off")
    gw = start_gateway(tmp_path / "gw", demo_models)
    try:
        pid = gw.worker_pid()
        text, finish, _ = tiny(gw, max_tokens=8)
        assert finish == "length" and text
        with pytest.raises(openai.InternalServerError) as exc:
            tiny(gw, max_tokens=1500)
        assert exc.value.status_code == 503
        assert "MB of KV cache" in exc.value.message and "memory limit" in exc.value.message
        text, finish, _ = tiny(gw, "still here?", max_tokens=8)
        assert finish == "length" and text
        assert gw.worker_pid() == pid  # no out-of-memory death, no restart
    finally:
        stop_gateway(gw)


def test_unknown_v1_path_is_json_404(gateway: Gateway) -> None:
    r = httpx.get(gateway.v1 + "/nope", headers={"Authorization": f"Bearer {gateway.key}"}, timeout=30)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_url"


def test_follow_up_turn_hits_the_prompt_cache(gateway: Gateway) -> None:
    client = gateway.openai()
    system = {"role": "system", "content": "You are a careful assistant.\n\n" + "Rule: be concise. " * 40}
    turn1 = [system, {"role": "user", "content": "first question"}]
    r1 = client.chat.completions.create(model=TINY, messages=turn1, max_tokens=10, temperature=0)
    turn2 = [
        *turn1,
        {"role": "assistant", "content": r1.choices[0].message.content},
        {"role": "user", "content": "and then?"},
    ]
    r2 = client.chat.completions.create(model=TINY, messages=turn2, max_tokens=10, temperature=0)
    # The whole first turn (system prompt included) is reused, not recomputed.
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens
    assert r2.usage.prompt_tokens > r2.usage.prompt_tokens_details.cached_tokens
    worker = gateway.health().json()["worker"]
    assert 0 < worker["prompt_cache_hit_rate"] <= 1
    # The tiers apart: these hits came from memory; the prefix is written through to disk.
    assert 0 < worker["prompt_cache_memory_hit_rate"] <= worker["prompt_cache_hit_rate"]
    assert worker["prompt_cache_disk_hit_rate"] >= 0
    for _ in range(200):
        (model,) = [m for m in gateway.health().json()["worker"]["loaded_models"] if m["name"] == TINY]
        if model["disk_cache_entries"]:
            break
        time.sleep(0.05)
    assert model["disk_cache_entries"] >= 1 and model["disk_cache_bytes"] > 0
