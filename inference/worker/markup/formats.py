"""Which reasoning and tool-call format a model uses (profile overrides, inferred from the
tokenizer), and tools injected into the prompt for models without native tool support."""

from __future__ import annotations

import importlib
import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from types import SimpleNamespace
from typing import Any

from mlx_lm.generate import TextStateMachine, make_text_state_machine

from inference.worker.markup.call_streams import (
    _CallStream,
    _GemmaCallStream,
    _GlmCallStream,
    _JsonCallStream,
    _PythonicCallStream,
    _XmlCallStream,
)

log = logging.getLogger(__name__)

# `reasoning_parser` overrides: the think tags to split on ("none" turns splitting off).
THINK_TAGS = {
    "think": ("<think>", "</think>"),
    "longcat": ("<longcat_think>", "</longcat_think>"),
    "gemma4": ("<|channel>thought", "<channel|>"),
}
# `tool_parser` values of our own, beside mlx-lm's module names.
INJECTED = "prompt"  # tools go into the system prompt; calls come back Hermes-style
LLAMA3_JSON = "llama3_json"
NO_TOOLS = "none"
# Formats whose arguments can be streamed as generated: literal JSON, Qwen3-Coder's XML, and
# the key/value formats of GLM, Gemma 4 and pythonic calls.
_JSON_FORMATS = {"json_tools", "mistral", LLAMA3_JSON, INJECTED}
_XML_FORMATS = {"qwen3_coder"}


class MarkupError(ValueError):
    """A profile names a parser that does not exist."""


# ---- Llama 3 JSON tool calls (`{"name": ..., "parameters": {...}}`, no start marker) -------


def parse_llama3_json(text: str, tools: Any = None) -> dict[str, Any] | list[dict[str, Any]]:
    """One or more JSON calls, separated by `;`, commas or newlines (Llama 3.1-3.3)."""
    decoder = json.JSONDecoder()
    text = text.strip().removeprefix("<|python_tag|>")
    calls: list[dict[str, Any]] = []
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n;,[]":
            pos += 1
        if pos >= len(text):
            break
        obj, pos = decoder.raw_decode(text, pos)
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise ValueError(f"not a tool call: {text[:200]}")
        args = obj.get("parameters", obj.get("arguments", {}))
        if isinstance(args, str):
            args = json.loads(args)
        calls.append({"name": obj["name"], "arguments": args})
    if not calls:
        raise ValueError("No function provided.")
    return calls[0] if len(calls) == 1 else calls


# ---- formats -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolFormat:
    name: str
    start: str
    end: str
    parser: Any  # (text, tools) -> call dict or list of them; raises ValueError
    bare_json: bool = False  # calls may start without a marker: an answer that opens with "{"

    def streamer(self, tools: list[dict[str, Any]] | None) -> _CallStream | None:
        """What streams this format's arguments while a call is generated, if anything."""
        if self.name in _JSON_FORMATS:
            return _JsonCallStream()
        if self.name in _XML_FORMATS:
            return _XmlCallStream(tools)
        if self.name == "glm47":
            return _GlmCallStream(tools)
        if self.name == "gemma4":
            return _GemmaCallStream()
        if self.name == "pythonic":
            return _PythonicCallStream()
        return None


def tool_format(name: str) -> ToolFormat:
    """A tool-call format by parser name: mlx-lm's modules, `llama3_json` or `prompt`."""
    if name == LLAMA3_JSON:
        return ToolFormat(LLAMA3_JSON, "<|python_tag|>", "", parse_llama3_json, bare_json=True)
    module_name = "json_tools" if name == INJECTED else name
    if not re.fullmatch(r"[a-z0-9_]+", module_name):
        raise MarkupError(f"unknown tool parser '{name}'")
    try:
        module = importlib.import_module(f"mlx_lm.tool_parsers.{module_name}")
    except ImportError as exc:
        raise MarkupError(f"unknown tool parser '{name}'") from exc
    return ToolFormat(name, module.tool_call_start, module.tool_call_end, module.parse_tool_call)


def _inferred_tool_format(tokenizer: Any) -> str | None:
    """mlx-lm's choice, plus Llama 3's JSON calls, which it does not infer."""
    if tokenizer.has_tool_calling:
        parser = tokenizer.tool_parser
        return str(getattr(parser, "__module__", "")).rsplit(".", 1)[-1] or None
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and "<|python_tag|>" in template and '"parameters": ' in template:
        return LLAMA3_JSON
    return None


@dataclass
class Markup:
    """How one model marks reasoning and tool calls, after the profile's overrides."""

    think: tuple[str, str] | None
    think_ids: tuple[tuple[int, ...], tuple[int, ...]] | None
    tool: ToolFormat | None
    structural_markers: tuple[str, ...] = ()
    response_transitions: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    response_initial_state: str | None = None

    @property
    def inject_tools(self) -> bool:
        return self.tool is not None and self.tool.name == INJECTED

    def machine(self, *, tools: bool) -> TextStateMachine:
        return self._machines[tools]

    @cached_property
    def _machines(self) -> dict[bool, TextStateMachine]:
        return {with_tools: self._build_machine(with_tools) for with_tools in (False, True)}

    def _build_machine(self, with_tools: bool) -> TextStateMachine:
        # mlx-lm builds the transitions from these attributes of its TokenizerWrapper.
        tool = self.tool if with_tools else None
        view = SimpleNamespace(
            has_thinking=self.think is not None,
            think_start=self.think[0] if self.think else None,
            think_end=self.think[1] if self.think else None,
            has_tool_calling=tool is not None and bool(tool.start),
            tool_call_start=tool.start if tool else None,
            tool_call_end=tool.end if tool else None,
            structural_markers=self.structural_markers,
            response_transitions=self.response_transitions,
        )
        return make_text_state_machine(view)

    def initial_state(self, prompt: list[int]) -> str:
        """ "reasoning" when the prompt ends inside an open think block (e.g. `<think>\\n`)."""
        state = "normal"
        if self.think_ids is not None:
            start = _rfind(prompt, self.think_ids[0])
            if start >= 0 and start > _rfind(prompt, self.think_ids[1]):
                state = "reasoning"
        return self.response_initial_state or state


def _rfind(tokens: list[int], seq: tuple[int, ...]) -> int:
    n = len(seq)
    if not n:
        return -1
    for i in range(len(tokens) - n, -1, -1):
        if tuple(tokens[i : i + n]) == seq:
            return i
    return -1


def resolve_markup(tokenizer: Any, *, tool_parser: str = "", reasoning_parser: str = "") -> Markup:
    """The model's markup: mlx-lm's inference from the tokenizer, or the profile's override."""
    if reasoning_parser in ("none", "off"):
        think = None
    elif reasoning_parser:
        if reasoning_parser not in THINK_TAGS:
            raise MarkupError(
                f"unknown reasoning parser '{reasoning_parser}' (known: {', '.join(THINK_TAGS)}, none)"
            )
        think = THINK_TAGS[reasoning_parser]
    elif tokenizer.has_thinking:
        think = (tokenizer.think_start, tokenizer.think_end)
    else:
        think = None
    think_ids = None
    if think is not None:
        if not reasoning_parser and tokenizer.think_start_tokens is not None:
            think_ids = (tuple(tokenizer.think_start_tokens), tuple(tokenizer.think_end_tokens))
        else:
            think_ids = tuple(tuple(tokenizer.encode(t, add_special_tokens=False)) for t in think)  # type: ignore[assignment]

    if tool_parser == NO_TOOLS:
        tool = None
    elif tool_parser:
        tool = tool_format(tool_parser)
    else:
        inferred = _inferred_tool_format(tokenizer)
        tool = tool_format(inferred) if inferred else None
    return Markup(
        think=think,
        think_ids=think_ids,
        tool=tool,
        structural_markers=tuple(getattr(tokenizer, "structural_markers", ()) or ()),
        response_transitions=dict(getattr(tokenizer, "response_transitions", {}) or {}),
        response_initial_state=getattr(tokenizer, "response_initial_state", None),
    )


# ---- tools injected into the prompt (models without native tool support) ------------------

_INJECT_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_INJECT_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def inject_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that knows nothing of tools: the tool list joins the system
    prompt, past calls and results become plain text in the Hermes format."""
    listing = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    block = _INJECT_HEADER + listing + _INJECT_FOOTER
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m.get("role"), _text(m.get("content"))
        if role == "assistant" and m.get("tool_calls"):
            calls = [
                "<tool_call>\n"
                + json.dumps(
                    {"name": c["function"]["name"], "arguments": c["function"].get("arguments", {})},
                    ensure_ascii=False,
                )
                + "\n</tool_call>"
                for c in m["tool_calls"]
            ]
            out.append({"role": "assistant", "content": "\n".join([content, *calls]).strip()})
        elif role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
        else:
            out.append({**m, "content": content})
    for m in out:
        m.pop("_tool_results", None)
    if out and out[0]["role"] == "system":
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}"}
    else:
        out.insert(0, {"role": "system", "content": block})
    return out


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""
