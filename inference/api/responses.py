"""OpenAI Responses API: `POST /v1/responses`, on the same worker requests as chat completions.

`_Builder` turns the worker's outputs into output items (reasoning, message, function_call)
in the order they were generated, and, when streaming, into the Responses event sequence
(`response.created` … `response.completed`, each with its `sequence_number`). The same
builder makes the non-streamed answer, so both agree. Errors use OpenAI's shape.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import msgspec
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from ninja import Router

from inference import gateway
from inference import protocol as p
from inference.client import EngineDeadError, EngineRequestError, get_engine_client
from inference.dispatch import routed
from inference.responses_schemas import ResponsesRequest
from mlxmanager.audit.recorder import track_outputs

router = Router(tags=["responses"])
_json = msgspec.json.Encoder()


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class _Builder:
    """Output items and (when `stream`) the events that build them."""

    def __init__(self, req: p.Generate, body: ResponsesRequest, *, stream: bool) -> None:
        self.stream = stream
        self.seq = 0
        self.items: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being generated
        self.reasoning_tokens = 0
        self.tokens_seen = 0
        s = req.sampling
        tools = [
            {"type": "function", "name": t["function"]["name"],
             "description": t["function"].get("description"),
             "parameters": t["function"]["parameters"], "strict": t["function"]["strict"]}
            for t in req.tools or []
        ]  # fmt: skip
        choice: Any = (
            req.tool_choice if req.tool_choice != "function" else {"type": "function", "name": req.tool_name}
        )
        effort = body.reasoning.effort if body.reasoning is not None else None
        summary = body.reasoning.summary if body.reasoning is not None else None
        self.response: dict[str, Any] = {
            "id": req.request_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": None,
            "model": req.model.name,
            "output": [],
            "parallel_tool_calls": req.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {"effort": effort, "summary": summary},
            "service_tier": "default",
            "store": False,
            "temperature": s.temperature,
            "text": body.text_echo(),
            "tool_choice": choice,
            "tools": tools,
            "top_logprobs": 0,
            "top_p": s.top_p,
            "truncation": "disabled",
            "usage": None,
            "user": body.user,
            "metadata": body.metadata or {},
        }

    # ---- events -------------------------------------------------------------------------------

    def _event(self, type_: str, **fields: Any) -> list[bytes]:
        if not self.stream:
            return []
        data = {"type": type_, **fields, "sequence_number": self.seq}
        self.seq += 1
        return [b"event: %b\ndata: %b\n\n" % (type_.encode(), _json.encode(data))]

    def start(self) -> list[bytes]:
        snapshot = dict(self.response)
        return self._event("response.created", response=snapshot) + self._event(
            "response.in_progress", response=snapshot
        )

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.items)}

    def _open(self, item: dict[str, Any]) -> list[bytes]:
        events = self.close()
        self.open = item
        shown = {k: v for k, v in item.items() if not k.startswith("_")}
        events += self._event("response.output_item.added", output_index=len(self.items), item=shown)
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events += self._event("response.content_part.added", **self._where(), content_index=0, part=part)
        elif item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": ""}
            events += self._event("response.content_part.added", **self._where(), content_index=0, part=part)
        return events

    def close(self, status: str = "completed") -> list[bytes]:
        """Finish the open item: its `done` events, and it joins the output."""
        item = self.open
        if item is None:
            return []
        events: list[bytes] = []
        where = self._where()
        kind = item["type"]
        if kind == "message":
            text = "".join(item.pop("_text"))
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            events += self._event(
                "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
            )
            events += self._event("response.content_part.done", **where, content_index=0, part=part)
        elif kind == "reasoning":
            text = "".join(item.pop("_text"))
            part = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            events += self._event("response.reasoning_text.done", **where, content_index=0, text=text)
            events += self._event("response.content_part.done", **where, content_index=0, part=part)
        else:
            item["arguments"] = "".join(item.pop("_text"))
            events += self._event(
                "response.function_call_arguments.done",
                **where,
                name=item["name"],
                arguments=item["arguments"],
            )
        item["status"] = status
        events += self._event("response.output_item.done", output_index=len(self.items), item=item)
        self.items.append(item)
        self.open = None
        return events

    def _append(self, kind: str, value: str) -> list[bytes]:
        events: list[bytes] = []
        if self.open is None or self.open["type"] != kind:
            if kind == "message":
                item = {"id": _item_id("msg"), "type": "message", "status": "in_progress",
                        "role": "assistant", "content": []}  # fmt: skip
            else:
                item = {"id": _item_id("rs"), "type": "reasoning", "status": "in_progress",
                        "summary": [], "content": []}  # fmt: skip
            events += self._open({**item, "_text": []})
        assert self.open is not None
        self.open["_text"].append(value)
        where = self._where()
        if kind == "message":
            events += self._event(
                "response.output_text.delta", **where, content_index=0, delta=value, logprobs=[]
            )
        else:
            events += self._event("response.reasoning_text.delta", **where, content_index=0, delta=value)
        return events

    def feed(self, out: p.Output) -> list[bytes]:
        if out.reasoning and not out.text and not out.tool_calls:
            self.reasoning_tokens += out.completion_tokens - self.tokens_seen
        self.tokens_seen = out.completion_tokens
        events: list[bytes] = []
        if out.reasoning:
            events += self._append("reasoning", out.reasoning)
        if out.text:
            events += self._append("message", out.text)
        for tc in out.tool_calls:
            if tc.id is not None:
                item = {"id": _item_id("fc"), "type": "function_call", "status": "in_progress",
                        "call_id": tc.id, "name": tc.name or "", "arguments": ""}  # fmt: skip
                events += self._open({**item, "_text": []})
            if tc.arguments and self.open is not None and self.open["type"] == "function_call":
                self.open["_text"].append(tc.arguments)
                events += self._event(
                    "response.function_call_arguments.delta", **self._where(), delta=tc.arguments
                )
        return events

    def finish(self, final: p.Output) -> list[bytes]:
        incomplete = final.finish_reason == "length"
        events = self.close("incomplete" if incomplete else "completed")
        self.response.update(
            status="incomplete" if incomplete else "completed",
            incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
            output=self.items,
            usage={
                "input_tokens": final.prompt_tokens,
                "input_tokens_details": {"cached_tokens": final.cached_tokens, "cache_write_tokens": 0},
                "output_tokens": final.completion_tokens,
                "output_tokens_details": {
                    "reasoning_tokens": min(self.reasoning_tokens, final.completion_tokens)
                },
                "total_tokens": final.prompt_tokens + final.completion_tokens,
            },
        )
        if not incomplete:
            self.response["completed_at"] = int(time.time())
        name = "response.incomplete" if incomplete else "response.completed"
        return events + self._event(name, response=self.response)

    def failed(self, exc: EngineDeadError | EngineRequestError) -> list[bytes]:
        code = exc.code if isinstance(exc, EngineRequestError) else "worker_unavailable"
        events = self._event("error", code=code, message=str(exc), param=None)
        self.response.update(
            status="failed", error={"code": "server_error", "message": str(exc)}, output=self.items
        )
        return events + self._event("response.failed", response=self.response)


async def _collect(
    builder: _Builder, first: list[p.Output], outputs: AsyncGenerator[list[p.Output], None]
) -> HttpResponse:
    batch = first
    async with aclosing(outputs):
        while True:
            for out in batch:
                builder.feed(out)
            if batch[-1].finish_reason is not None:
                break
            batch = await outputs.__anext__()
    builder.finish(batch[-1])
    return HttpResponse(_json.encode(builder.response), content_type="application/json")


async def _events(
    builder: _Builder, first: list[p.Output], outputs: AsyncGenerator[list[p.Output], None]
) -> AsyncIterator[bytes]:
    """The Responses event sequence; closing it early (client gone) aborts the worker request."""
    async with aclosing(outputs):
        for event in builder.start():
            yield event
        batch = first
        try:
            while True:
                chunk = b"".join(event for out in batch for event in builder.feed(out))
                if chunk:
                    yield chunk
                if batch[-1].finish_reason is not None:
                    break
                batch = await outputs.__anext__()
        except (EngineDeadError, EngineRequestError) as exc:
            yield b"".join(builder.failed(exc))
            return
        yield b"".join(builder.finish(batch[-1]))


@router.post("/responses")
@routed("responses")
async def create_response(request: HttpRequest, body: ResponsesRequest) -> HttpResponseBase:
    body.refuse_unsupported()
    target = await gateway.resolve(body.model)
    gateway.require_kind(target, gateway.TEXT_KINDS, model=body.model)
    req = gateway.responses_request(body, target)
    outputs = track_outputs(get_engine_client().generate(req))
    try:
        # Wait for the worker's first answer, so setup errors still get a proper status.
        first = await outputs.__anext__()
    except BaseException:
        await outputs.aclose()
        raise
    builder = _Builder(req, body, stream=body.stream)
    if not body.stream:
        return await _collect(builder, first, outputs)
    response = StreamingHttpResponse(_events(builder, first, outputs), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
