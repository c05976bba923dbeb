"""Reasoning and tool-call markup in generated text: which format a model uses, and a
per-request parser that splits the stream into content, reasoning and tool-call deltas.

mlx-lm does the inference and the matching: `TokenizerWrapper` knows the think tags and the
tool parser (from the chat template), `make_text_state_machine` strips the markers and
tells which state each piece of text is in, and `mlx_lm.tool_parsers` turn a finished call
into a name and arguments. What this module adds: profile overrides, a Llama 3 JSON
parser (mlx-lm has none), tools injected into the prompt for models without native tool
support, and streaming of JSON arguments while they are generated.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from types import SimpleNamespace
from typing import Any

from mlx_lm.generate import TextStateMachine, make_text_state_machine

from inference import protocol as p

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


# ---- streaming JSON arguments ---------------------------------------------------------------

_OBJECT_HEADER = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')
_MISTRAL_HEADER = re.compile(r"([\w.-]+)\s*\[ARGS\]\s*$")


@dataclass
class _Streamed:
    index: int
    name: str
    arguments: str = ""
    complete: bool = False  # all of the arguments were sent


class _JsonCallStream:
    """Finds calls in tool-call text as it grows and streams their JSON arguments.

    Handles `{"name": "f", "arguments": {...}}` objects (one, several, or a JSON list of
    them) and Mistral's `f[ARGS]{...}`. What it can't follow (arguments before the name,
    arguments as a string) is left for the parser at the end of the call.
    """

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0
        self.depth = 0
        self.in_str = self.esc = False
        self.obj_start: int | None = None
        self.last_end = 0
        self.args_start: int | None = None
        self.args_sent = 0
        self.args_end: int | None = None
        self.current: _Streamed | None = None

    def feed(self, text: str, new_call: Any) -> list[tuple[_Streamed, str]]:
        """Scan new text; returns (call, argument piece) pairs, starting calls via `new_call`."""
        self.text += text
        out: list[tuple[_Streamed, str]] = []
        t = self.text
        while self.pos < len(t):
            i = self.pos
            c = t[i]
            self.pos += 1
            if self.obj_start is None:
                if c == "{":
                    self.obj_start, self.depth = i, 1
                    self.in_str = self.esc = False
                    self.args_start = self.args_end = None
                    head = _MISTRAL_HEADER.search(t, self.last_end, i)
                    if head is not None:  # Mistral: the whole object is the arguments
                        self.current = new_call(head.group(1))
                        self.args_start = self.args_sent = i
                continue
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif c == "\\":
                    self.esc = True
                elif c == '"':
                    self.in_str = False
                continue
            if c == '"':
                self.in_str = True
            elif c in "{[":
                if c == "{" and self.depth == 1 and self.args_start is None:
                    head = _OBJECT_HEADER.fullmatch(t, self.obj_start, i)
                    if head is not None:
                        self.current = new_call(json.loads(f'"{head.group(1)}"'))
                        self.args_start = self.args_sent = i
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.args_start is not None and self.args_end is None:
                    mistral = self.args_start == self.obj_start
                    if self.depth == (0 if mistral else 1):
                        self.args_end = i + 1
                if self.depth == 0:
                    self._send(out)
                    self.obj_start, self.last_end = None, i + 1
                    self.current = None
        self._send(out)
        return out

    def _send(self, out: list[tuple[_Streamed, str]]) -> None:
        if self.current is None or self.args_start is None:
            return
        end = self.args_end if self.args_end is not None else self.pos
        if end > self.args_sent:
            piece = self.text[self.args_sent : end]
            self.args_sent = end
            self.current.arguments += piece
            out.append((self.current, piece))
        if self.args_end is not None:
            self.current.complete = True


_XML_FUNCTION = re.compile(r"<function=([^\s<>]+)>")
_XML_PARAM = re.compile(r"<parameter=([^\s<>]+)>|</function>")
_XML_PARAM_END = "</parameter>"
_XML_STRING_TYPES = {"string", "str", "text", "varchar", "char", "enum"}


class _XmlCallStream:
    """Streams Qwen3-Coder's `<function=f><parameter=k>\nvalue\n</parameter></function>` as
    JSON arguments: string values character by character, other values once complete
    (converted by mlx-lm's own `qwen3_coder` rules, so the result matches its parser)."""

    def __init__(self, tools: list[dict[str, Any]] | None) -> None:
        self.tools = tools
        self.text = ""
        self.pos = 0
        self.current: _Streamed | None = None
        self.config: dict[str, Any] = {}
        self.key: str | None = None
        self.string = False
        self.first_param = True
        self.value_start: int | None = None

    def feed(self, text: str, new_call: Any) -> list[tuple[_Streamed, str]]:
        from mlx_lm.tool_parsers import qwen3_coder

        self.text += text
        out: list[tuple[_Streamed, str]] = []

        def send(piece: str) -> None:
            assert self.current is not None
            self.current.arguments += piece
            out.append((self.current, piece))

        while True:
            t = self.text
            if self.current is None:
                m = _XML_FUNCTION.search(t, self.pos)
                if m is None:
                    return out
                self.current = new_call(m.group(1))
                self.config = qwen3_coder._get_arguments_config(m.group(1), self.tools)
                self.pos, self.first_param = m.end(), True
                send("{")
            elif self.key is None:
                m = _XML_PARAM.search(t, self.pos)
                if m is None:
                    return out
                self.pos = m.end()
                if m.group(0) == "</function>":
                    send("}")
                    self.current.complete = True
                    self.current = None
                    continue
                self.key = m.group(1)
                schema = self.config.get(self.key) or {}
                kind = (
                    str(schema.get("type", "string")).strip().lower()
                    if isinstance(schema, dict)
                    else "string"
                )
                self.string = kind in _XML_STRING_TYPES
                send(
                    ("" if self.first_param else ", ")
                    + json.dumps(self.key)
                    + ": "
                    + ('"' if self.string else "")
                )
                self.first_param, self.value_start = False, None
            else:
                if self.value_start is None:  # the parser drops one newline after the tag
                    if len(t) <= self.pos:
                        return out
                    self.value_start = self.pos + (t[self.pos] == "\n")
                    self.pos = self.value_start
                end = t.find(_XML_PARAM_END, self.value_start)
                if end < 0:
                    if self.string:
                        # Hold back what could still be "\n</parameter>".
                        safe = len(t)
                        for k in range(1, len(_XML_PARAM_END) + 2):
                            if ("\n" + _XML_PARAM_END).startswith(t[-k:]):
                                safe = len(t) - k
                        if safe > self.pos:
                            send(json.dumps(t[self.pos : safe], ensure_ascii=False)[1:-1])
                            self.pos = safe
                    return out
                value = t[self.value_start : end]
                value = value[:-1] if value.endswith("\n") else value
                if self.string:
                    rest = value[self.pos - self.value_start :]
                    send(json.dumps(rest, ensure_ascii=False)[1:-1] + '"')
                else:
                    converted = qwen3_coder._convert_param_value(value, self.key, self.config)
                    send(json.dumps(converted, ensure_ascii=False))
                self.pos, self.key = end + len(_XML_PARAM_END), None


# ---- key/value formats: GLM 4.5+, Gemma 4, pythonic ------------------------------------------


def _held_back(text: str, marker: str) -> int:
    """How much of `text` is safe to send: all but a tail that could start `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return len(text) - k
    return len(text)


def _json_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


class _KeyValueStream:
    """Streams calls written as a name and key/value arguments as JSON arguments: `{`, then
    `"key": value` pairs as each completes (string values piece by piece where the format
    delimits them), then `}`. Values are converted by mlx-lm's own parser rules, so the
    joined pieces equal what the parser returns for the whole call."""

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0
        self.current: _Streamed | None = None
        self.first = True
        self.out: list[tuple[_Streamed, str]] = []

    def send(self, piece: str) -> None:
        assert self.current is not None
        self.current.arguments += piece
        self.out.append((self.current, piece))

    def start(self, new_call: Any, name: str) -> None:
        self.current = new_call(name)
        self.first = True
        self.send("{")

    def key(self, key: str, opening: str = "") -> None:
        self.send(("" if self.first else ", ") + json.dumps(key, ensure_ascii=False) + ": " + opening)
        self.first = False

    def end(self) -> None:
        self.send("}")
        assert self.current is not None
        self.current.complete = True
        self.current = None

    def feed(self, text: str, new_call: Any) -> list[tuple[_Streamed, str]]:
        self.text += text
        self.out = []
        while self.step(new_call):
            pass
        return self.out

    def step(self, new_call: Any) -> bool:
        """Consume what can be consumed; False when more text is needed."""
        raise NotImplementedError

    def close(self) -> list[tuple[_Streamed, str]]:
        """The call's markup ended (formats whose call ends with the region)."""
        return []


_GLM_ARG = re.compile(r"(?:\\n|\s)*<arg_key>(.*?)</arg_key>(?:\\n|\s)*<arg_value>", re.DOTALL)
_GLM_VALUE_END = "</arg_value>"


class _GlmCallStream(_KeyValueStream):
    """GLM 4.5+: `name<arg_key>k</arg_key><arg_value>v</arg_value>…`, one call per region.
    String values (by the tool's schema) stream piece by piece, others once complete."""

    def __init__(self, tools: list[dict[str, Any]] | None) -> None:
        super().__init__()
        self.tools = tools
        self.strings: set[str] = set()
        self.value_start: int | None = None
        self.string = False
        self.sent = 0  # characters of the current string value already sent

    def step(self, new_call: Any) -> bool:
        from mlx_lm.tool_parsers import glm47

        t = self.text
        if self.current is None:
            if self.pos:  # the call is over; anything else is left to the parser
                return False
            i = t.find("<arg_key>")
            if i < 0:
                return False
            name = t[:i].strip()
            self.start(new_call, name)
            self.strings = glm47._get_string_arg_names(name, self.tools)
            self.pos = i
            return True
        if self.value_start is None:
            m = _GLM_ARG.match(t, self.pos)
            if m is None:
                return False
            key = m.group(1).strip()
            self.string = key in self.strings
            self.key(key, '"' if self.string else "")
            self.value_start, self.sent, self.pos = m.end(), 0, m.end()
            return True
        end = t.find(_GLM_VALUE_END, self.value_start)
        raw = t[self.value_start : end if end >= 0 else len(t)]
        if end < 0:
            if self.string:  # leading and trailing whitespace are stripped: hold it back
                safe = raw.lstrip()
                safe = safe[: _held_back(safe, _GLM_VALUE_END)].rstrip()
                if len(safe) > self.sent:
                    self.send(_json_str(safe[self.sent :]))
                    self.sent = len(safe)
            return False
        value = raw.strip()
        if self.string:
            self.send(_json_str(value[self.sent :]) + '"')
        else:
            self.send(json.dumps(glm47._deserialize(value), ensure_ascii=False))
        self.value_start, self.pos = None, end + len(_GLM_VALUE_END)
        return True

    def close(self) -> list[tuple[_Streamed, str]]:
        self.out = []
        if self.current is not None and self.value_start is None:
            self.end()
        return self.out


_GEMMA_CALL = re.compile(r"call:([\w-]+)\{")
_GEMMA_KEY = re.compile(r"(\w+):")
_GEMMA_STR = '<|"|>'


class _GemmaCallStream(_KeyValueStream):
    """Gemma 4: `call:name{key:<|"|>text<|"|>,n:3,nested:{…}}`, several per region. String
    values stream piece by piece; others (numbers, lists, objects) once complete."""

    def __init__(self) -> None:
        super().__init__()
        self.key_name: str | None = None
        self.value_start: int | None = None
        self.string = False
        self.sent = 0
        self.broken = False

    def step(self, new_call: Any) -> bool:
        from mlx_lm.tool_parsers import gemma4

        t = self.text
        if self.broken:
            return False
        if self.current is None:
            m = _GEMMA_CALL.search(t, self.pos)
            if m is None:
                return False
            self.start(new_call, m.group(1))
            self.pos = m.end()
            return True
        if self.key_name is None:
            if self.pos >= len(t):
                return False
            if t[self.pos] == "}":
                self.pos += 1
                self.end()
                return True
            if t[self.pos] == ",":
                self.pos += 1
                return True
            m = _GEMMA_KEY.match(t, self.pos)
            if m is None:
                return False  # not a whole key yet (or not this format: the parser decides)
            if len(t) < m.end() + len(_GEMMA_STR) and _GEMMA_STR.startswith(t[m.end() :]):
                return False  # can't tell a string from another value yet
            self.key_name = m.group(1)
            self.string = t.startswith(_GEMMA_STR, m.end())
            self.key(self.key_name, '"' if self.string else "")
            self.value_start = m.end() + (len(_GEMMA_STR) if self.string else 0)
            self.pos, self.sent = self.value_start, 0
            return True
        assert self.value_start is not None
        if self.string:
            end = t.find(_GEMMA_STR, self.value_start)
            raw = t[self.value_start : end if end >= 0 else _held_back(t, _GEMMA_STR)]
            piece = raw[self.sent :]
            self.sent = len(raw)
            if end < 0:
                if piece:
                    self.send(_json_str(piece))
                return False
            self.send(_json_str(piece) + '"')
            self.pos = end + len(_GEMMA_STR)
        else:
            stop = _gemma_value_end(t, self.value_start)
            if stop is None:
                return False
            wrapped = "{" + self.key_name + ":" + t[self.value_start : stop] + "}"
            try:
                value = json.loads(gemma4._gemma4_args_to_json(wrapped))[self.key_name]
            except (ValueError, KeyError):
                self.broken = True  # not this format after all: the parser sees the whole call
                return False
            self.send(json.dumps(value, ensure_ascii=False))
            self.pos = stop
        self.key_name = self.value_start = None
        return True


def _gemma_value_end(t: str, i: int) -> int | None:
    """Where a non-string Gemma 4 value starting at `i` ends (a top-level `,` or `}`)."""
    depth = 0
    while i < len(t):
        if t.startswith(_GEMMA_STR, i):
            close = t.find(_GEMMA_STR, i + len(_GEMMA_STR))
            if close < 0:
                return None
            i = close + len(_GEMMA_STR)
            continue
        c = t[i]
        if c in "{[":
            depth += 1
        elif c in "}]":
            if depth == 0:
                return i
            depth -= 1
        elif c == "," and depth == 0:
            return i
        i += 1
    return None


_PY_CALL = re.compile(r"([\w.]+)\(")
_PY_KEY = re.compile(r"\s*(\w+)\s*=\s*")


class _PythonicCallStream(_KeyValueStream):
    """Pythonic calls: `[f(a="x", b=2), g()]`. Each argument is sent once its value is
    complete, converted as mlx-lm does (a Python literal; JSON's true/false/null allowed)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_call = False
        self.broken = False

    def step(self, new_call: Any) -> bool:
        from mlx_lm.tool_parsers import pythonic

        t = self.text
        if self.broken:
            return False
        if self.current is None:
            m = _PY_CALL.search(t, self.pos)
            if m is None:
                return False
            self.start(new_call, m.group(1))
            self.pos = m.end()
            return True
        while self.pos < len(t) and t[self.pos] in " \t\r\n,":
            self.pos += 1
        if self.pos >= len(t):
            return False
        if t[self.pos] == ")":
            self.pos += 1
            self.end()
            return True
        m = _PY_KEY.match(t, self.pos)
        if m is None or m.end() == len(t):
            return False
        end = _python_value_end(t, m.end())
        if end is None:
            return False
        try:
            node = ast.parse(t[m.end() : end].strip(), mode="eval").body
            value = ast.literal_eval(pythonic._JSONLiterals().visit(node))
            encoded = json.dumps(value, ensure_ascii=False)
        except (SyntaxError, ValueError, TypeError):
            self.broken = True  # not a Python literal: the parser sees the whole call
            return False
        self.key(m.group(1))
        self.send(encoded)
        self.pos = end
        return True


def _python_value_end(t: str, i: int) -> int | None:
    """Where a Python literal starting at `i` ends (a top-level `,` or `)`)."""
    depth = 0
    quote: str | None = None
    while i < len(t):
        c = t[i]
        if quote is not None:
            if c == "\\":
                i += 1
            elif t.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c in "\"'":
            quote = c * 3 if t.startswith(c * 3, i) else c
            i += len(quote) - 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                return i if c == ")" else None
            depth -= 1
        elif c == "," and depth == 0:
            return i
        i += 1
    return None


_CallStream = _JsonCallStream | _XmlCallStream | _KeyValueStream


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
