"""The per-request parser: splits a generation into content, reasoning and tool-call deltas."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from mlx_lm.generate import TextStateMachine

from inference import protocol as p
from inference.worker.markup.call_streams import _CallStream, _KeyValueStream, _Streamed
from inference.worker.markup.formats import Markup

log = logging.getLogger(__name__)

# ---- per request -----------------------------------------------------------------------------


@dataclass
class Delta:
    text: str = ""
    reasoning: str = ""
    tool_calls: list[p.ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.text or self.reasoning or self.tool_calls)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class OutputParser:
    """Splits one request's decoded text into content, reasoning and tool calls."""

    def __init__(self, markup: Markup, *, initial_state: str, tools: list[dict[str, Any]] | None) -> None:
        self.tools = tools
        self.format = markup.tool if tools else None
        self.state = markup.machine(tools=bool(self.format)).make_state(initial_state)
        self.calls: list[_Streamed] = []
        self.closed_calls = 0  # tool-call regions that ended with at least one call
        self._regions = 0  # tool-call regions opened
        self.region_calls: list[_Streamed] = []  # streamed from the current tool region
        self.tool_text = ""
        self.stream: _CallStream | None = None
        self.prev = initial_state
        # Llama 3 JSON: an answer whose first character is "{" is a call, without a marker.
        self._bare_pending = bool(self.format and self.format.bare_json)
        self.bare = False
        # Whitespace-only content is held back: dropped when it only separates reasoning or
        # tool calls (Qwen writes "\n\n" after </think>), sent when real content follows.
        self._ws = ""
        self._tidy = bool(self.format) or markup.think is not None
        self._content_started = False
        self._saw_reasoning = initial_state == "reasoning"

    @property
    def made_calls(self) -> bool:
        return bool(self.calls)

    def feed(self, text: str) -> Delta:
        delta = Delta()
        if not text:
            return delta
        self.state, segments = TextStateMachine.split(self.state, text)
        self._route(segments, delta)
        return delta

    def finish(self) -> Delta:
        """End of generation: flush held-back text and close an unfinished call."""
        delta = Delta()
        self.state, rest, current = TextStateMachine.flush(self.state)
        self._route([(current, rest)], delta)
        if self.prev == "tool" or self.bare:
            self._close_region(delta)
        if self._ws and not self._regions and (self._content_started or not self._saw_reasoning):
            delta.text += self._ws
        self._ws = ""
        return delta

    def _route(self, segments: list[tuple[str | None, str]], delta: Delta) -> None:
        for state, text in segments:
            if self.prev == "tool" and state != "tool":
                self._close_region(delta)
            if state == "reasoning":
                self._saw_reasoning = True
                delta.reasoning += text
            elif state == "tool":
                if self.prev != "tool":
                    self._open_region()
                self._tool_text(text, delta)
            elif state is not None:
                self._content(text, delta)
            self.prev = state or self.prev

    def _content(self, text: str, delta: Delta) -> None:
        if self.bare:
            self._tool_text(text, delta)
            return
        if not self._tidy:
            delta.text += text
            return
        if not text.strip():
            self._ws += text
            return
        if self._bare_pending:
            # The first real character decides whether the answer is a bare JSON call.
            self._bare_pending = False
            stripped = text.lstrip()
            if stripped[0] == "{":
                self._ws, self.bare = "", True
                self._open_region()
                self._tool_text(stripped, delta)
                return
        if not self._content_started and (self._saw_reasoning or self._regions):
            text = text.lstrip()
        else:
            text = self._ws + text
        body = text.rstrip()
        self._ws = text[len(body) :]  # trailing whitespace waits for what follows
        self._content_started = True
        delta.text += body

    def _open_region(self) -> None:
        self._regions += 1
        self.tool_text = ""
        self.region_calls = []
        self.stream = self.format.streamer(self.tools) if self.format else None

    def _tool_text(self, text: str, delta: Delta) -> None:
        self.tool_text += text
        if self.stream is None:
            return

        def new_call(name: str) -> _Streamed:
            call = _Streamed(index=len(self.calls), name=name)
            self.calls.append(call)
            self.region_calls.append(call)
            delta.tool_calls.append(p.ToolCallDelta(call.index, new_call_id(), name, ""))
            return call

        for call, piece in self.stream.feed(text, new_call):
            delta.tool_calls.append(p.ToolCallDelta(call.index, arguments=piece))

    def _close_region(self, delta: Delta) -> None:
        """A call's markup ended: parse it with the format's parser and send what the
        stream has not sent yet."""
        text, self.tool_text = self.tool_text, ""
        self.bare = False
        assert self.format is not None
        if isinstance(self.stream, _KeyValueStream):
            for call, piece in self.stream.close():
                delta.tool_calls.append(p.ToolCallDelta(call.index, arguments=piece))
        try:
            parsed = self.format.parser(text, self.tools)
        except (ValueError, json.JSONDecodeError) as exc:
            if text.strip():
                log.warning("could not parse a tool call (%s): %.200r", exc, text)
            return
        calls = parsed if isinstance(parsed, list) else [parsed]
        self.closed_calls += 1
        for i, call in enumerate(calls):
            name, args = call.get("name"), call.get("arguments", {})
            if not isinstance(name, str):
                continue
            if isinstance(args, str):
                with contextlib.suppress(json.JSONDecodeError):
                    args = json.loads(args)
            if i < len(self.region_calls):
                streamed = self.region_calls[i]
                if not streamed.arguments:
                    streamed.arguments = _dumps(args)
                    delta.tool_calls.append(p.ToolCallDelta(streamed.index, arguments=streamed.arguments))
                elif not _same_json(streamed.arguments, args):
                    log.warning("streamed arguments of %s differ from the parsed ones", name)
                continue
            index = len(self.calls)
            self.calls.append(_Streamed(index=index, name=name, arguments=_dumps(args), complete=True))
            delta.tool_calls.append(p.ToolCallDelta(index, new_call_id(), name, _dumps(args)))
        self.region_calls = []
        self.stream = None


def _dumps(args: Any) -> str:
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


def _same_json(text: str, value: Any) -> bool:
    try:
        return bool(json.loads(text) == value)
    except json.JSONDecodeError:
        return False
