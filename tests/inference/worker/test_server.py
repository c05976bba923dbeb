"""The worker's connection writer: what the scheduler emits between two writes goes out as
one frame; a first token, an end and an error are never held back."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgspec
import pytest

from inference import protocol as p
from inference.worker.server import Connection

pytestmark = pytest.mark.asyncio


class Writer:
    """Collects what the connection writes (a stand-in for asyncio's StreamWriter)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def frames(self) -> list[list[Any]]:
        """Each write, decoded into its messages (Outputs frames flattened)."""
        decoder = msgspec.msgpack.Decoder(p.FromWorker)
        out: list[list[Any]] = []
        for data in self.writes:
            msgs: list[Any] = []
            while data:
                (size,) = struct.unpack(">I", data[:4])
                msg = decoder.decode(data[4 : 4 + size])
                msgs += msg.items if isinstance(msg, p.Outputs) else [msg]
                data = data[4 + size :]
            out.append(msgs)
        return out


def out(rid: str, n: int, text: str, finish: str | None = None) -> p.Output:
    return p.Output(rid, text, n, finish, 5, 0)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_tokens_between_writes_go_out_together_and_the_end_at_once() -> None:
    loop = asyncio.get_running_loop()
    writer = Writer()
    conn = Connection(writer, p.worker_codec(), interval=5.0)  # type: ignore[arg-type]
    conn.emit(loop, [out("a", 1, "He")])  # a first token: written at once
    await settle()
    assert [[o.text for o in f] for f in writer.frames()] == [["He"]]
    conn.emit(loop, [out("a", 2, "l")])
    conn.emit(loop, [out("a", 3, "l"), out("b", 1, "x")])  # b's first token: no wait
    await settle()
    assert [[o.text for o in f] for f in writer.frames()] == [["He"], ["l", "l", "x"]]
    conn.emit(loop, [out("a", 4, "o")])
    conn.emit(loop, [out("b", 2, "y")])
    await asyncio.sleep(0.05)
    assert len(writer.frames()) == 2  # held: the last write was under 5 s ago
    conn.emit(loop, [out("a", 5, "!", finish="stop")])  # an end flushes what waits, in order
    await settle()
    frames = writer.frames()
    assert [(o.request_id, o.text) for o in frames[2]] == [("a", "o"), ("b", "y"), ("a", "!")]
    assert frames[2][-1].finish_reason == "stop"


async def test_errors_are_not_held_and_nothing_is_written_after_close() -> None:
    loop = asyncio.get_running_loop()
    writer = Writer()
    conn = Connection(writer, p.worker_codec(), interval=5.0)  # type: ignore[arg-type]
    conn.emit(loop, [out("a", 1, "He")])
    await settle()
    conn.emit(loop, [out("a", 2, "l")])
    conn.emit(loop, [p.RequestError(request_id="b", code=p.ERR_INTERNAL, message="boom")])
    await settle()
    frames = writer.frames()
    assert len(frames) == 2 and [type(m).__name__ for m in frames[1]] == ["RequestError", "Output"]
    conn.closed = True
    conn.emit(loop, [out("a", 3, "x", finish="length")])
    await settle()
    assert len(writer.frames()) == 2


async def test_without_an_interval_each_wake_up_writes() -> None:
    loop = asyncio.get_running_loop()
    writer = Writer()
    conn = Connection(writer, p.worker_codec(), interval=0.0)  # type: ignore[arg-type]
    for n in range(1, 4):
        conn.emit(loop, [out("a", n, str(n))])
        await settle()
    assert [[o.text for o in f] for f in writer.frames()] == [["1"], ["2"], ["3"]]
