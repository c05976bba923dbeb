"""Tool-call arguments streamed while they are generated: JSON, XML (Qwen3 Coder), and the
key/value formats (GLM 4.5+, Gemma 4, pythonic)."""

from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

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
