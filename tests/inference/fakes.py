"""Fake OpenAI- and Anthropic-shaped upstreams: real HTTP on 127.0.0.1, in a thread.

One server speaks both protocols (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`
(text only), `/v1/models` OpenAI-style with `Authorization: Bearer`; `/v1/messages`, `/v1/messages/count_tokens`,
`/v1/models` Anthropic-style with `x-api-key`). Answers are deterministic ("echo: <last user
text>"); a request offering tools gets a tool call unless it already carries a tool result.
Failures are scripted per upstream model: `fake.script("m", Step(status=500), Step(delay=2))`
queues behaviours for the next requests of model "m"; `fake.always("m", Step(...))` sticks.
Every request is recorded (path, headers, JSON body) for assertions.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROMPT_TOKENS = 11
CACHED_TOKENS = 3
TOOL_ARGS = '{"city": "Paris", "unit": "celsius"}'


@dataclass
class Step:
    status: int = 200
    delay: float = 0.0  # before the response headers
    chunk_delay: float = 0.0  # between streamed events
    drop: bool = False  # close the connection without answering
    drop_midstream: bool = False  # answer 200, send two events, then close
    retry_after: str | None = None
    message: str = "injected failure"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    at: float = field(default_factory=time.monotonic)


class FakeUpstream:
    def __init__(self, key: str = "sk-fake-upstream-SECRET-0123456789") -> None:
        self.key = key
        self.requests: list[Recorded] = []
        self._scripts: dict[str, deque[Step]] = defaultdict(deque)
        self._always: dict[str, Step] = {}
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-upstream", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, model: str, *steps: Step) -> None:
        with self._lock:
            self._scripts[model].extend(steps)

    def always(self, model: str, step: Step | None) -> None:
        with self._lock:
            if step is None:
                self._always.pop(model, None)
            else:
                self._always[model] = step

    def next_step(self, model: str) -> Step:
        with self._lock:
            queue = self._scripts.get(model)
            if queue:
                return queue.popleft()
            return self._always.get(model, Step())

    def calls(self, model: str | None = None, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (model is None or (r.body or {}).get("model") == model)
                and (path is None or r.path == path)
            ]

    def record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            return " ".join(b.get("text", "") for b in c or [] if b.get("type") == "text")
    return ""


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + (" " if i < len(parts) - 1 else "") for i, p in enumerate(parts)]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeUpstream
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes: without this, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ---- plumbing ----
    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _anthropic(self) -> bool:
        return self.path.startswith("/v1/messages") or "x-api-key" in self.headers

    def _authorized(self, anthropic: bool) -> bool:
        if anthropic:
            return self.headers.get("x-api-key") == self.fake.key
        return self.headers.get("authorization") == f"Bearer {self.fake.key}"

    def _error(
        self, anthropic: bool, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        if anthropic:
            types = {401: "authentication_error", 429: "rate_limit_error", 400: "invalid_request_error",
                     404: "not_found_error", 529: "overloaded_error"}  # fmt: skip
            body = {"type": "error", "error": {"type": types.get(status, "api_error"), "message": message}}
        else:
            types = {401: "invalid_request_error", 429: "rate_limit_error", 400: "invalid_request_error"}
            body = {"error": {"message": message, "type": types.get(status, "server_error"), "param": None,
                              "code": "invalid_api_key" if status == 401 else None}}  # fmt: skip
        self._json(status, body, headers)

    # ---- routes ----
    def do_GET(self) -> None:
        anthropic = "x-api-key" in self.headers
        self.fake.record(Recorded("GET", self.path, dict(self.headers.items()), None))
        if self.path != "/v1/models":
            self._error(anthropic, 404, "not found")
            return
        if not self._authorized(anthropic):
            self._error(anthropic, 401, "invalid api key")
            return
        ids = ["fake-small", "fake-large"]
        if anthropic:
            data = [
                {"type": "model", "id": i, "display_name": i, "created_at": "2025-01-01T00:00:00Z"}
                for i in ids
            ]
            self._json(200, {"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]})
        else:
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": i, "object": "model", "created": 0, "owned_by": "fake"} for i in ids],
                },
            )

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        self.fake.record(Recorded("POST", self.path, dict(self.headers.items()), body))
        anthropic = self._anthropic()
        if not self._authorized(anthropic):
            self._error(anthropic, 401, "invalid api key")
            return
        if body is None:
            self._error(anthropic, 400, "bad json")
            return
        step = self.fake.next_step(str(body.get("model")))
        if step.delay:
            time.sleep(step.delay)
        if step.drop:
            self._drop()
            return
        if step.status != 200:
            headers = {"retry-after": step.retry_after} if step.retry_after is not None else None
            self._error(anthropic, step.status, step.message, headers)
            return
        if self.path == "/v1/chat/completions":
            self._chat(body, step)
        elif self.path == "/v1/completions":
            self._completion(body, step)
        elif self.path == "/v1/responses":
            self._responses(body, step)
        elif self.path == "/v1/messages":
            self._messages(body, step)
        elif self.path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": 42})
        else:
            self._error(anthropic, 404, "not found")

    # ---- OpenAI ----
    def _chat(self, body: dict[str, Any], step: Step) -> None:
        messages = body.get("messages") or []
        wants_tool = bool(body.get("tools")) and not any(m.get("role") == "tool" for m in messages)
        text = "echo: " + _last_user_text(messages)
        if any(m.get("role") == "tool" for m in messages):
            text = "tool said: " + next(
                str(m.get("content")) for m in reversed(messages) if m.get("role") == "tool"
            )
        words = _words(text)
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(words) if not wants_tool else 9,
                 "total_tokens": PROMPT_TOKENS + (len(words) if not wants_tool else 9),
                 "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS}}  # fmt: skip
        rid, model, created = "chatcmpl-fake123", body.get("model"), 1700000000
        tool_name = ((body.get("tools") or [{}])[0].get("function") or {}).get("name", "")
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if wants_tool else text}
            if wants_tool:
                message["tool_calls"] = [{"id": "call_fake1", "type": "function",
                                          "function": {"name": tool_name, "arguments": TOOL_ARGS}}]  # fmt: skip
            self._json(200, {"id": rid, "object": "chat.completion", "created": created, "model": model,
                             "choices": [{"index": 0, "message": message, "logprobs": None,
                                          "finish_reason": "tool_calls" if wants_tool else "stop"}],
                             "usage": usage})  # fmt: skip
            return

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
            choices = (
                []
                if delta is None
                else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            )
            data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": choices, **extra}  # fmt: skip
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        self._start_stream()
        self._chunk(chunk({"role": "assistant", "content": ""}))
        pieces: list[bytes] = []
        if wants_tool:
            pieces.append(chunk({"tool_calls": [{"index": 0, "id": "call_fake1", "type": "function",
                                                 "function": {"name": tool_name, "arguments": ""}}]}))  # fmt: skip
            for part in (TOOL_ARGS[:12], TOOL_ARGS[12:]):
                pieces.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
        else:
            pieces += [chunk({"content": w}) for w in words]
        for i, piece in enumerate(pieces):
            if step.drop_midstream and i == 2:
                self._drop()
                return
            if step.chunk_delay:
                time.sleep(step.chunk_delay)
            self._chunk(piece)
        self._chunk(chunk({}, "tool_calls" if wants_tool else "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._chunk(chunk(None, usage=usage))
        self._chunk(b"data: [DONE]\n\n")
        self._end_stream()

    def _completion(self, body: dict[str, Any], step: Step) -> None:
        text = "echo: " + str(body.get("prompt"))
        usage = {
            "prompt_tokens": 5,
            "completion_tokens": len(_words(text)),
            "total_tokens": 5 + len(_words(text)),
        }
        base = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": 1700000000,
            "model": body.get("model"),
        }
        if not body.get("stream"):
            self._json(200, {**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                             "usage": usage})  # fmt: skip
            return
        self._start_stream()
        for w in _words(text):
            self._chunk(b"data: " + json.dumps({**base, "choices": [{"index": 0, "text": w, "logprobs": None,
                                                                     "finish_reason": None}]}).encode() + b"\n\n")  # fmt: skip
        self._chunk(b"data: " + json.dumps({**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                                                 "finish_reason": "stop"}]}).encode() + b"\n\n")  # fmt: skip
        if (body.get("stream_options") or {}).get("include_usage"):
            self._chunk(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._end_stream()

    def _responses(self, body: dict[str, Any], step: Step) -> None:
        prompt = body.get("input")
        text = "echo: " + (prompt if isinstance(prompt, str) else json.dumps(prompt))
        words = _words(text)
        usage = {"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
                 "output_tokens": len(words), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": PROMPT_TOKENS + len(words)}  # fmt: skip
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {
            "id": "msg_fake",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        done = {"id": "resp_fake", "object": "response", "created_at": 1700000000, "status": "completed",
                "model": body.get("model"), "output": [item], "parallel_tool_calls": True, "tool_choice": "auto",
                "tools": [], "usage": usage}  # fmt: skip
        if not body.get("stream"):
            self._json(200, done)
            return
        seq = iter(range(1000))

        def ev(kind: str, **data: Any) -> bytes:
            payload = {"type": kind, **data, "sequence_number": next(seq)}
            return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()

        started = {**done, "status": "in_progress", "output": [], "usage": None}
        where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        self._start_stream()
        self._chunk(ev("response.created", response=started))
        self._chunk(ev("response.output_item.added", output_index=0, item={**item, "content": []}))
        self._chunk(ev("response.content_part.added", **where, part={**part, "text": ""}))
        for w in words:
            if step.chunk_delay:
                time.sleep(step.chunk_delay)
            self._chunk(ev("response.output_text.delta", **where, delta=w, logprobs=[]))
        self._chunk(ev("response.output_text.done", **where, text=text, logprobs=[]))
        self._chunk(ev("response.content_part.done", **where, part=part))
        self._chunk(ev("response.output_item.done", output_index=0, item=item))
        self._chunk(ev("response.completed", response=done))
        self._end_stream()

    # ---- Anthropic ----
    def _messages(self, body: dict[str, Any], step: Step) -> None:
        messages = body.get("messages") or []
        results = [b for m in messages if isinstance(m.get("content"), list) for b in m["content"]
                   if b.get("type") == "tool_result"]  # fmt: skip
        wants_tool = bool(body.get("tools")) and not results
        text = "echo: " + _last_user_text(messages)
        if results:
            c = results[-1].get("content")
            text = "tool said: " + (c if isinstance(c, str) else " ".join(b.get("text", "") for b in c or []))
        words = _words(text)
        tool_name = (body.get("tools") or [{}])[0].get("name", "")
        usage_in = {"input_tokens": PROMPT_TOKENS - CACHED_TOKENS, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": CACHED_TOKENS}  # fmt: skip
        out_tokens = 9 if wants_tool else len(words)
        model = body.get("model")
        if not body.get("stream"):
            content = ([{"type": "tool_use", "id": "toolu_fake1", "name": tool_name, "input": json.loads(TOOL_ARGS)}]
                       if wants_tool else [{"type": "text", "text": text}])  # fmt: skip
            self._json(200, {"id": "msg_fake123", "type": "message", "role": "assistant", "model": model,
                             "content": content, "stop_reason": "tool_use" if wants_tool else "end_turn",
                             "stop_sequence": None, "usage": {**usage_in, "output_tokens": out_tokens}})  # fmt: skip
            return

        def ev(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        self._start_stream()
        start = {"id": "msg_fake123", "type": "message", "role": "assistant", "model": model, "content": [],
                 "stop_reason": None, "stop_sequence": None, "usage": {**usage_in, "output_tokens": 1}}  # fmt: skip
        self._chunk(ev("message_start", {"type": "message_start", "message": start}))
        pieces: list[bytes] = []
        if wants_tool:
            pieces.append(ev("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "tool_use", "id": "toolu_fake1", "name": tool_name, "input": {}}}))  # fmt: skip
            for part in (TOOL_ARGS[:12], TOOL_ARGS[12:]):
                pieces.append(ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": part}}))  # fmt: skip
        else:
            pieces.append(ev("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}))  # fmt: skip
            pieces.append(ev("ping", {"type": "ping"}))
            pieces += [ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                          "delta": {"type": "text_delta", "text": w}}) for w in words]  # fmt: skip
        for i, piece in enumerate(pieces):
            if step.drop_midstream and i == 2:
                self._drop()
                return
            if step.chunk_delay:
                time.sleep(step.chunk_delay)
            self._chunk(piece)
        self._chunk(ev("content_block_stop", {"type": "content_block_stop", "index": 0}))
        self._chunk(ev("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": "tool_use" if wants_tool else "end_turn", "stop_sequence": None},
                                         "usage": {"output_tokens": out_tokens}}))  # fmt: skip
        self._chunk(ev("message_stop", {"type": "message_stop"}))
        self._end_stream()
