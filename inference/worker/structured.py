"""Constrained decoding with llguidance, as mlx-lm logits processors.

A request's grammar (a JSON schema for `response_format`, or the tool-call markup of the
model's format with each tool's parameter schema) is compiled by llguidance against the
model's tokenizer; before every sampling step the processor masks the tokens the grammar
forbids. Each request has its own matcher, so constrained and free requests share a batch.

A grammar can wait for a trigger (a token sequence) before it applies: the end of the
reasoning block, so a model thinks freely and then answers in the schema, or a tool-call
start marker, so free text may come first and only the call itself is constrained.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any

import mlx.core as mx
import numpy as np

log = logging.getLogger(__name__)

# JSON as models are trained to write it (`{"a": 1, "b": 2}`), with no free whitespace: a
# weak model could otherwise pad with spaces until max_tokens.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_MATCHER_CACHE = 64
_TRIGGER_WS = r"/[ \t\r\n]{0,4}/"  # between the end of reasoning and the constrained answer


class GrammarError(ValueError):
    """The schema or grammar cannot be compiled (the client's fault: a 400)."""


class Grammars:
    """One model's llguidance tokenizer (built on first use) and compiled grammars."""

    def __init__(self, tokenizer: Any, *, vocab_size: int, eos_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self._hf = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = sorted(eos_ids)
        self._llt: Any = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def llt(self) -> Any:
        if self._llt is None:
            import llguidance.hf

            hf = getattr(self._hf, "_tokenizer", self._hf)
            self._llt = llguidance.hf.from_tokenizer(hf, n_vocab=self.vocab_size, eos_token=self.eos_ids)
        return self._llt

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for a grammar (compiled once, then copied)."""
        from llguidance import LLMatcher

        with self._lock:
            base = self._cache.get(grammar)
            if base is None:
                base = LLMatcher(self.llt, grammar, log_level=0)
                if base.is_error():
                    raise GrammarError(base.get_error())
                self._cache[grammar] = base
                while len(self._cache) > _MATCHER_CACHE:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(grammar)
            return base.deep_copy()

    def marker(self, text: str) -> str:
        """A markup string in Lark: the token itself when it is one token (special tokens
        can't be spelled with text), else the literal."""
        ids = self._hf.encode(text, add_special_tokens=False)
        if len(ids) == 1 and self._hf.decode(ids) == text:
            return f"<[{ids[0]}]>"
        return json.dumps(text)


# ---- grammars --------------------------------------------------------------------------------


def _json_rule(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS}, ensure_ascii=False)


def response_grammar(response_format: dict[str, Any], *, after_trigger: bool) -> str:
    """`{"type": "json_object"}` or `{"type": "json_schema", "schema": {...}}` as Lark."""
    schema = response_format.get("schema") if response_format.get("type") == "json_schema" else None
    if not isinstance(schema, dict):
        schema = {"type": "object"}
    from llguidance import LLMatcher

    lead = f"{_TRIGGER_WS} " if after_trigger else ""
    return LLMatcher.grammar_from_lark(f"start: {lead}body\nbody: {_json_rule(schema)}\n")


def _call_schema(tool: dict[str, Any], args_key: str) -> dict[str, Any]:
    fn = tool.get("function", tool)
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, args_key: params},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def _xml_function_rules(i: int, tool: dict[str, Any]) -> str:
    """Qwen3-Coder's `<function=NAME>` with one `<parameter=KEY>` block per argument: text for
    strings (up to `maxLength`), JSON for every other type; required ones in order."""
    fn = tool.get("function", tool)
    params = fn.get("parameters") or {}
    props: dict[str, Any] = params.get("properties") or {}
    required = set(params.get("required") or [])
    parts, rules = [], []
    for j, (key, schema) in enumerate(props.items()):
        rule = f"f{i}_p{j}"
        head = json.dumps(f"<parameter={key}>\n")
        end = json.dumps("\n</parameter>\n")
        if not isinstance(schema, dict):
            schema = {}
        if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
            choices = " | ".join(json.dumps(v) for v in schema["enum"])
            rules.append(f"{rule}: {head} ({choices}) {end}\n")
        elif schema.get("type") == "string":
            limit = schema.get("maxLength")
            text = f"/(.|\\n){{0,{int(limit)}}}/" if isinstance(limit, int) else "/(.|\\n)*/"
            rules.append(f"{rule}: {head} {rule}_v\n{rule}_v[lazy]: {text} {end}\n")
        else:
            rules.append(f"{rule}: {head} {rule}_v {end}\n{rule}_v: {_json_rule(schema)}\n")
        parts.append(rule if key in required else f"{rule}?")
    head = json.dumps(f"<function={fn['name']}>\n")
    return f"f{i}: {head} {' '.join(parts)}\n" + "".join(rules)


class UnsupportedFormat(GrammarError):
    """Tool calls of this format can't be constrained yet."""


def tool_call_grammar(
    grammars: Grammars,
    fmt: Any,
    tools: list[dict[str, Any]],
    *,
    forced: bool,
    parallel: bool,
    after_trigger: bool = False,
) -> str:
    """Lark for tool calls in the model's format.

    `forced`: the whole answer is one call (or several when `parallel`), from its start
    marker on. Otherwise the grammar is the body of one call, applied after its start marker.
    Formats: Qwen/Hermes JSON (and the injected `prompt` format), Qwen3-Coder XML, Mistral
    (JSON list, or `name[ARGS]{...}` when the template uses it) and Llama 3 JSON (forced only).
    """
    from llguidance import LLMatcher

    name = fmt.name
    if name in ("json_tools", "prompt"):
        alts = " | ".join(f"c{i}" for i in range(len(tools)))
        rules = "".join(f"c{i}: {_json_rule(_call_schema(t, 'arguments'))}\n" for i, t in enumerate(tools))
        body = f'"\\n" ({alts}) "\\n" {grammars.marker(fmt.end)}'
        if not forced:
            return LLMatcher.grammar_from_lark(f"start: {body}\n{rules}")
        call = f"{grammars.marker(fmt.start)} {body}"
        more = ' ("\\n" call)*' if parallel else ""
        lead = f"{_TRIGGER_WS} " if after_trigger else ""
        return LLMatcher.grammar_from_lark(f"start: {lead}call{more}\ncall: {call}\n{rules}")
    template = getattr(grammars.tokenizer, "chat_template", None)
    if name == "mistral" and isinstance(template, str) and "[ARGS]" in template:
        # Tokenizer v11+ (Mistral Small 3.2, Magistral, Devstral): [TOOL_CALLS]name[ARGS]{...}
        alts = " | ".join(f"c{i}" for i in range(len(tools)))
        args = grammars.marker("[ARGS]")
        rules = "".join(
            f"c{i}: {json.dumps(t.get('function', t)['name'])} {args} "
            f"{_json_rule(t.get('function', t).get('parameters') or {'type': 'object'})}\n"
            for i, t in enumerate(tools)
        )
        call = f"{grammars.marker(fmt.start)} ({alts})"
        if not forced:
            return LLMatcher.grammar_from_lark(f"start: {alts}\n{rules}")
        lead = f"{_TRIGGER_WS} " if after_trigger else ""
        more = " call*" if parallel else ""
        return LLMatcher.grammar_from_lark(f"start: {lead}call{more}\ncall: {call}\n{rules}")
    if name == "mistral":
        items = {"anyOf": [_call_schema(t, "arguments") for t in tools]}
        schema: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
        if not parallel:
            schema["maxItems"] = 1
        body = _json_rule(schema)
        if not forced:
            return LLMatcher.grammar_from_lark(f"start: {body}\n")
        lead = f"{_TRIGGER_WS} " if after_trigger else ""
        return LLMatcher.grammar_from_lark(f"start: {lead}{grammars.marker(fmt.start)} {body}\n")
    if name == "qwen3_coder":
        funcs = " | ".join(f"f{i}" for i in range(len(tools)))
        rules = "".join(_xml_function_rules(i, t) for i, t in enumerate(tools))
        body = f'"\\n" ({funcs}) "</function>\\n" {grammars.marker(fmt.end)}'
        if not forced:
            return LLMatcher.grammar_from_lark(f"start: {body}\n{rules}")
        more = ' ("\\n" call)*' if parallel else ""
        lead = f"{_TRIGGER_WS} " if after_trigger else ""
        call = f"{grammars.marker(fmt.start)} {body}"
        return LLMatcher.grammar_from_lark(f"start: {lead}call{more}\ncall: {call}\n{rules}")
    if name == "llama3_json" and forced:
        alts = " | ".join(f"c{i}" for i in range(len(tools)))
        rules = "".join(f"c{i}: {_json_rule(_call_schema(t, 'parameters'))}\n" for i, t in enumerate(tools))
        lead = f"{_TRIGGER_WS} " if after_trigger else ""
        return LLMatcher.grammar_from_lark(f"start: {lead}({alts})\n{rules}")
    raise UnsupportedFormat(
        f"constrained tool calls are not supported for this model's tool-call format ('{name}')"
    )


# ---- processors ------------------------------------------------------------------------------


class _TailWatch:
    """Recognises a token sequence at the end of the generated tokens."""

    def __init__(self, seq: tuple[int, ...]) -> None:
        self.seq = seq
        self.recent: list[int] = []

    def push(self, token: int) -> bool:
        if not self.seq:
            return False
        self.recent.append(token)
        del self.recent[: -len(self.seq)]
        return tuple(self.recent) == self.seq


def _last(tokens: mx.array) -> int:
    value: Any = tokens[-1].item()
    return int(value)


def _mask_logits(logits: mx.array, allowed: np.ndarray) -> mx.array:
    vocab = logits.shape[-1]
    if allowed.shape[0] < vocab:
        allowed = np.concatenate([allowed, np.zeros(vocab - allowed.shape[0], dtype=bool)])
    return mx.where(mx.array(allowed[:vocab]), logits, mx.array(-mx.inf, dtype=logits.dtype))


class GrammarProcessor:
    """An mlx-lm logits processor that keeps one request inside a grammar.

    mlx-lm calls it once per step with the token context, whose last entry is the token
    sampled at the previous step (the last prompt token on the first call).
    `trigger`: stay inactive until these tokens were generated. `repeat`: after the grammar
    completes, wait for the trigger again (one constrained tool call after each start
    marker) instead of allowing only end-of-sequence.
    """

    def __init__(
        self,
        grammars: Grammars,
        grammar: str,
        *,
        trigger: tuple[int, ...] | None = None,
        repeat: bool = False,
    ) -> None:
        self.grammars = grammars
        self.grammar = grammar
        self.matcher = grammars.matcher(grammar)  # compile now: errors belong to admission
        self.watch = _TailWatch(trigger) if trigger else None
        self.active = trigger is None
        self.repeat = repeat
        self.first = True
        self.failed = False

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self.first:
            self.first = False
        else:
            self._consume(_last(tokens))
        if not self.active or self.failed:
            return logits
        if self.repeat and self.matcher.is_stopped():
            self._deactivate()
            return logits
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little").astype(bool)
        return _mask_logits(logits, allowed)

    def _consume(self, token: int) -> None:
        if not self.active:
            if self.watch is not None and self.watch.push(token):
                self.active = True
            return
        if self.failed:
            return
        if not self.matcher.consume_token(token):
            # Only if another processor forced a token the grammar forbids.
            log.warning("grammar left after token %d: %s", token, self.matcher.get_error())
            self.failed = True
        elif self.repeat and self.matcher.is_stopped():
            self._deactivate()

    def _deactivate(self) -> None:
        self.active = False
        self.matcher = self.grammars.matcher(self.grammar)
        if self.watch is not None:
            self.watch.recent.clear()


class ThinkingBudget:
    """Forces the end-of-reasoning marker once a reasoning block has `budget` tokens."""

    def __init__(self, budget: int, *, start: tuple[int, ...], end: tuple[int, ...], reasoning: bool) -> None:
        self.budget = budget
        self.end = end
        self.start_watch = _TailWatch(start)
        self.end_watch = _TailWatch(end)
        self.reasoning = reasoning
        self.count = 0
        self.forcing = -1  # index into `end` while forcing it
        self.first = True

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self.first:
            self.first = False
        else:
            self._consume(_last(tokens))
        if self.reasoning and self.forcing < 0 and self.count >= self.budget:
            self.forcing = 0
        if self.forcing < 0:
            return logits
        allowed = np.zeros(logits.shape[-1], dtype=bool)
        allowed[self.end[self.forcing]] = True
        return _mask_logits(mx.zeros_like(logits), allowed)

    def _consume(self, token: int) -> None:
        if self.forcing >= 0:
            self.forcing += 1
            if self.forcing >= len(self.end):
                self.forcing, self.reasoning = -1, False
            return
        if self.reasoning:
            self.count += 1
            if self.end_watch.push(token):
                self.reasoning = False
        elif self.start_watch.push(token):
            self.reasoning, self.count = True, 0
