"""The web side of the worker protocol: what `EngineClient.generate` yields when several of a
request's tokens arrive at once (one frame, or frames read before the stream's consumer runs)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inference import protocol as p
from inference.client import EngineClient

pytestmark = pytest.mark.asyncio


async def fake_worker(path: Path, outputs: list[p.Output]) -> asyncio.AbstractServer:
    """A worker that greets, then answers any Generate with `outputs` in one frame."""
    codec = p.worker_codec()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert isinstance(await codec.read(reader), p.Hello)
        writer.write(codec.encode(p.Welcome(pid=1)))
        while True:
            try:
                msg = await codec.read(reader)
            except asyncio.IncompleteReadError:
                break
            if isinstance(msg, p.Generate):
                writer.write(codec.encode(p.Outputs([p.Output(msg.request_id, o.text, o.completion_tokens,
                                                              o.finish_reason) for o in outputs])))  # fmt: skip
        writer.close()

    return await asyncio.start_unix_server(serve, str(path))


def request() -> p.Generate:
    return p.Generate(request_id="r1", model=p.ModelSpec(name="m", path="/m"), sampling=p.SamplingParams(),
                      prompt="hi")  # fmt: skip


TOKENS = [p.Output("", "He", 1), p.Output("", "l", 2), p.Output("", "lo", 3, "stop")]


@pytest.mark.parametrize(
    ("interval", "expected"), [("10", [["He", "l", "lo"]]), ("0", [["He"], ["l"], ["lo"]])]
)
async def test_tokens_that_arrive_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: str, expected: list[list[str]]
) -> None:
    """By default they are yielded together (one SSE event); with MLXM_STREAM_INTERVAL_MS=0
    one by one, however far the web process has fallen behind the worker."""
    monkeypatch.setenv("MLXM_STREAM_INTERVAL_MS", interval)
    server = await fake_worker(tmp_path / "w.sock", TOKENS)
    client = EngineClient(str(tmp_path / "w.sock"))
    try:
        got = [[o.text for o in outs] async for outs in client.generate(request())]
    finally:
        await client.aclose()
        server.close()
    assert got == expected
