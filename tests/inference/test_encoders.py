"""The one module that writes streamed bytes: SSE framing, error shapes, and a guard that no
other module writes SSE frames by hand."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from inference import encoders
from inference import protocol as p
from inference.events import Failure, Stream, UpstreamStreamError

ROOT = Path(__file__).resolve().parents[2]


def test_frames() -> None:
    assert encoders.frame({"a": 1}) == b'data: {"a":1}\n\n'
    assert encoders.frame({"type": "ping"}, event="ping") == b'event: ping\ndata: {"type":"ping"}\n\n'
    # An HTML fragment: every line gets its own data line (htmx's SSE extension joins them).
    assert encoders.html_frame("x", "<a>\n<b>") == b"event: x\ndata: <a>\ndata: <b>\n\n"
    assert encoders.html_frame("x", "") == b"event: x\ndata: \n\n"
    assert encoders.retry_frame(2000) == b"retry: 2000\n\n"


def test_error_shapes_carry_the_request_id() -> None:
    f = Failure(400, "bad", "invalid_request", "invalid_request_error", "max_tokens")
    assert encoders.openai_error(f, "rid-1") == {"error": {"message": "bad", "type": "invalid_request_error",
                                                           "param": "max_tokens", "code": "invalid_request",
                                                           "request_id": "rid-1"}}  # fmt: skip
    body = encoders.anthropic_error(f, "rid-1")
    assert body == {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: bad"},
                    "request_id": "rid-1"}  # fmt: skip
    overloaded = Failure(503, "busy", p.ERR_OVERLOADED, "server_error")
    assert encoders.error_response(encoders.ANTHROPIC, overloaded).status_code == 529
    limited = Failure(429, "slow down", "rate_limit_exceeded", "rate_limit_error", retry_after=7)
    assert encoders.error_response(encoders.OPENAI, limited)["Retry-After"] == "7"


async def _failing() -> object:
    yield [p.Output(request_id="r", text="Hel", completion_tokens=1)]
    raise UpstreamStreamError("upstream: gone")


def test_a_failure_mid_stream_ends_each_api_with_its_own_error_event() -> None:
    async def run(make: object) -> list[bytes]:
        stream = Stream(id="x", model="m", first=[p.Output(request_id="r", text="", completion_tokens=0)],
                        rest=_failing())  # type: ignore[arg-type]  # fmt: skip
        return [b async for b in make(stream)]  # type: ignore[operator]

    chat = asyncio.run(
        run(lambda s: encoders.openai_events(s, chat=True, include_usage=False, request_id="r9"))
    )
    assert chat[-1] == encoders.DONE
    assert json.loads(chat[-2].removeprefix(b"data: "))["error"]["request_id"] == "r9"
    messages = asyncio.run(run(lambda s: encoders.anthropic_events(s, request_id="r9")))
    assert messages[-1].startswith(b"event: error\n") and b'"request_id":"r9"' in messages[-1]


def test_no_other_module_writes_sse_frames() -> None:
    """`data: ` and `event: ` are written by inference/encoders.py only."""
    writes = re.compile(r"""(b?["'])(data|event|retry): """)
    offenders = []
    for path in [*ROOT.joinpath("inference").rglob("*.py"), *ROOT.joinpath("mlxmanager").rglob("*.py")]:
        if path.name == "encoders.py" and path.parent.name == "inference":
            continue
        if writes.search(path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
