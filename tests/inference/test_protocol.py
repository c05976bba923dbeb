import asyncio

import pytest

from inference import protocol as p


def read_frames(codec: p.FrameCodec, data: bytes, n: int = 1) -> list[object]:
    async def go() -> list[object]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [await codec.read(reader) for _ in range(n)]

    return asyncio.run(go())


def test_worker_bound_messages_round_trip() -> None:
    web, worker = p.client_codec(), p.worker_codec()
    gen = p.Generate(
        request_id="r1",
        model=p.ModelSpec(name="m", path="/models/m"),
        sampling=p.SamplingParams(max_tokens=5, temperature=0.0, stop=["\n"], logit_bias={3: 1.5}),
        messages=[{"role": "user", "content": "hi"}],
    )
    data = web.encode(gen) + web.encode(p.Abort(request_id="r1")) + web.encode(p.Health(request_id="h"))

    got = read_frames(worker, data, 3)
    assert got[0] == gen
    assert got[1] == p.Abort(request_id="r1")
    assert isinstance(got[2], p.Health)


def test_outputs_are_one_frame_for_many_tokens() -> None:
    worker, web = p.worker_codec(), p.client_codec()
    items = [p.Output("a", "x", 1), p.Output("b", "y", 2, "stop", 10, 4)]
    frame = worker.encode(p.Outputs(items))
    (got,) = read_frames(web, frame)
    assert got == p.Outputs(items)
    assert got.items[1].finish_reason == "stop" and got.items[1].cached_tokens == 4


def test_eof_and_oversized_frames() -> None:
    codec = p.client_codec()
    with pytest.raises(asyncio.IncompleteReadError):
        read_frames(codec, b"\x00\x00")
    with pytest.raises(ValueError, match="exceeds"):
        read_frames(codec, (p.MAX_FRAME_BYTES + 1).to_bytes(4, "big"))


def test_count_tokens_round_trip() -> None:
    web, worker = p.client_codec(), p.worker_codec()
    ask = p.CountTokens(
        request_id="c1",
        model=p.ModelSpec(name="m", path="/models/m"),
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}],
        chat_template_kwargs={"add_generation_prompt": False, "continue_final_message": True},
    )
    (got,) = read_frames(worker, web.encode(ask))
    assert got == ask
    (reply,) = read_frames(web, worker.encode(p.TokenCount(request_id="c1", input_tokens=12)))
    assert reply == p.TokenCount(request_id="c1", input_tokens=12)


def test_tools_reasoning_and_tool_call_deltas_round_trip() -> None:
    web, worker = p.client_codec(), p.worker_codec()
    gen = p.Generate(
        request_id="t1",
        model=p.ModelSpec(name="m", path="/models/m"),
        sampling=p.SamplingParams(),
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="function",
        tool_name="f",
        parallel_tool_calls=False,
        tool_parser="prompt",
        response_format={"type": "json_schema", "schema": {"type": "object"}},
        thinking_budget=64,
    )
    (got,) = read_frames(worker, web.encode(gen))
    assert got == gen
    out = p.Output("t1", "", 3, "tool_calls", 9, 0, None, "hmm", [p.ToolCallDelta(0, "call_1", "f", '{"a"')])
    (frame,) = read_frames(web, worker.encode(p.Outputs([out, p.Output("t1", "x", 4)])))
    assert frame.items[0] == out
    assert frame.items[1].reasoning == "" and frame.items[1].tool_calls == []
