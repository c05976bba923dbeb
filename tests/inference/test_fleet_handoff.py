"""Several workers behind one gateway (inference/fleet.py): a worker whose queue is full hands the request on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inference import protocol as p
from inference.client import EngineClient, EngineRequestError
from inference.fleet import WorkerGroup, _State

pytestmark = pytest.mark.asyncio


async def worker(path: Path, answer: str) -> asyncio.AbstractServer:
    """A worker over the real protocol that answers every Generate with a full queue
    (`answer="full"`) or with one final output naming itself."""
    codec = p.worker_codec()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert isinstance(await codec.read(reader), p.Hello)
        writer.write(codec.encode(p.Welcome(pid=1)))
        while True:
            try:
                msg = await codec.read(reader)
            except asyncio.IncompleteReadError:
                break
            if not isinstance(msg, p.Generate):
                continue
            if answer == "full":
                writer.write(codec.encode(p.RequestError(request_id=msg.request_id, code=p.ERR_QUEUE_FULL,
                                                         message=f"{path.stem} is full", retry_after=7.0)))  # fmt: skip
            else:
                writer.write(codec.encode(p.Outputs([p.Output(msg.request_id, path.stem, 1, "stop")])))
        writer.close()

    return await asyncio.start_unix_server(serve, str(path))


def request() -> p.Generate:
    return p.Generate(request_id="r1", model=p.ModelSpec(name="m", path="/m"), sampling=p.SamplingParams(),
                      prompt="hi", user="ann")  # fmt: skip


async def two_workers(
    tmp_path: Path, first: str, second: str
) -> tuple[WorkerGroup, list[asyncio.AbstractServer]]:
    servers = [await worker(tmp_path / "one.sock", first), await worker(tmp_path / "two.sock", second)]
    group = WorkerGroup(EngineClient(str(tmp_path / "one.sock")), secret=None, tls_ca=None)
    group.remote["two"] = _State(EngineClient(str(tmp_path / "two.sock")), "two")
    group._listed_at = float("inf")  # no registered workers to read: these two
    return group, servers


async def close(group: WorkerGroup, servers: list[asyncio.AbstractServer]) -> None:
    for _, client in group.clients():
        await client.aclose()
    for s in servers:
        s.close()


async def test_a_full_queue_sends_the_request_to_the_next_worker(tmp_path: Path) -> None:
    group, servers = await two_workers(tmp_path, "full", "ok")
    try:
        got = [o.text for outs in [x async for x in group.generate(request())] for o in outs]
    finally:
        await close(group, servers)
    assert got == ["two"]


async def test_when_every_queue_is_full_the_last_refusal_keeps_its_retry_after(tmp_path: Path) -> None:
    group, servers = await two_workers(tmp_path, "full", "full")
    try:
        with pytest.raises(EngineRequestError) as caught:
            [x async for x in group.generate(request())]
    finally:
        await close(group, servers)
    assert caught.value.code == p.ERR_QUEUE_FULL and caught.value.retry_after == 7.0
    assert caught.value.message == "two is full"
