"""How a text model's requests become a prompt: the chat template (tools rendered, or injected
into the system prompt), token ids, the output parser for the model's reasoning and
tool-call markup, and the logits processors that constrain the answer (grammars, the
thinking budget). Shared by the text and vision engines."""

from __future__ import annotations

import logging
from typing import Any

from inference import protocol as p
from inference.worker import markup as mk
from inference.worker import structured

log = logging.getLogger(__name__)


class BadRequest(Exception):
    """The request cannot be served as sent (e.g. the chat template rejects it)."""


class Prompts:
    """One model's prompt building; markup formats are resolved once per profile setting."""

    def __init__(self, tokenizer: Any, grammars: structured.Grammars, *, name: str) -> None:
        self.tokenizer = tokenizer
        self.grammars = grammars
        self.name = name
        self._markups: dict[tuple[str, str], mk.Markup] = {}

    def markup(self, tool_parser: str = "", reasoning_parser: str = "") -> mk.Markup:
        key = (tool_parser, reasoning_parser)
        found = self._markups.get(key)
        if found is None:
            try:
                found = mk.resolve_markup(
                    self.tokenizer, tool_parser=tool_parser, reasoning_parser=reasoning_parser
                )
            except mk.MarkupError as exc:
                raise BadRequest(f"profile setting: {exc}") from exc
            self._markups[key] = found
        return found

    def tools(self, req: p.Generate | p.CountTokens) -> list[dict[str, Any]] | None:
        """The tools the model sees and may call: none when tool_choice is "none"."""
        if not req.tools or getattr(req, "tool_choice", "auto") == "none":
            return None
        return req.tools

    def chat(self, req: p.Generate | p.CountTokens) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and chat-template kwargs for `req` (tools rendered or injected)."""
        if not self.tokenizer.has_chat_template:
            raise BadRequest(f"model '{self.name}' has no chat template")
        # A prefill (continue_final_message) turns the generation prompt off.
        kwargs = {"add_generation_prompt": True, **req.chat_template_kwargs}
        messages, tools = req.messages or [], self.tools(req)
        if tools:
            markup = self.markup(req.tool_parser, getattr(req, "reasoning_parser", ""))
            if markup.tool is None:
                raise BadRequest(
                    f"model '{self.name}' has no tool-call format; set its profile's "
                    "tool parser (e.g. 'prompt' to describe the tools in the system prompt)"
                )
            if markup.inject_tools:
                messages = mk.inject_tools(messages, tools)
            else:
                kwargs["tools"] = tools
        return messages, kwargs

    def tokenize(self, req: p.Generate | p.CountTokens) -> list[int]:
        tok = self.tokenizer
        try:
            if req.messages is not None:
                messages, kwargs = self.chat(req)
                ids = tok.apply_chat_template(messages, **kwargs)
            else:
                ids = tok.encode(req.prompt or "")
        except BadRequest:
            raise
        except Exception as exc:  # template errors are the client's message shape
            raise BadRequest(f"could not build the prompt: {exc}") from exc
        ids = list(ids)
        if not ids:
            raise BadRequest("the prompt is empty")
        return ids

    def count_tokens(self, req: p.CountTokens) -> int:
        return len(self.tokenize(req))

    def prepare(self, req: p.Generate, prompt: list[int]) -> tuple[mk.OutputParser, list[Any]]:
        """The request's output parser and its extra logits processors (grammar, budget)."""
        if req.messages is None:  # a raw completion: the text as generated, markers and all
            markup, initial = mk.Markup(think=None, think_ids=None, tool=None), "normal"
        else:
            markup = self.markup(req.tool_parser, req.reasoning_parser)
            initial = markup.initial_state(prompt)
        tools = self.tools(req)
        parser = mk.OutputParser(markup, initial_state=initial, tools=tools)
        processors: list[Any] = []
        reasoning = initial == "reasoning"
        # Constrain only the answer: a reasoning prompt waits for the end of the think block.
        after_think = markup.think_ids[1] if reasoning and markup.think_ids else None
        try:
            if tools and req.tool_choice in ("required", "function"):
                assert markup.tool is not None
                chosen = tools
                if req.tool_choice == "function":
                    chosen = [t for t in tools if t.get("function", {}).get("name") == req.tool_name]
                    if not chosen:
                        raise BadRequest(f"tool_choice names '{req.tool_name}', which is not in tools")
                grammar = structured.tool_call_grammar(
                    self.grammars,
                    markup.tool,
                    chosen,
                    forced=True,
                    parallel=req.parallel_tool_calls and req.tool_choice == "required",
                    after_trigger=after_think is not None,
                )
                processors.append(structured.GrammarProcessor(self.grammars, grammar, trigger=after_think))
            elif req.response_format is not None:
                grammar = structured.response_grammar(
                    req.response_format, after_trigger=after_think is not None
                )
                processors.append(structured.GrammarProcessor(self.grammars, grammar, trigger=after_think))
            elif tools and markup.tool is not None and any(_strict(t) for t in tools):
                start = tuple(self.tokenizer.encode(markup.tool.start, add_special_tokens=False))
                try:
                    grammar = structured.tool_call_grammar(
                        self.grammars, markup.tool, tools, forced=False, parallel=True
                    )
                except structured.UnsupportedFormat:
                    # `auto` leaves calling to the model: unconstrained where we can't constrain.
                    log.info("strict tools not constrained for format %s", markup.tool.name)
                    start = ()
                if start:
                    processors.append(
                        structured.GrammarProcessor(self.grammars, grammar, trigger=start, repeat=True)
                    )
        except structured.GrammarError as exc:
            raise BadRequest(f"could not compile the constraint: {exc}") from exc
        if req.thinking_budget is not None and markup.think_ids is not None:
            start_ids, end_ids = markup.think_ids
            # Last, so that a forced end of reasoning wins over everything else.
            processors.append(
                structured.ThinkingBudget(
                    req.thinking_budget, start=start_ids, end=end_ids, reasoning=reasoning
                )
            )
        return parser, processors


def _strict(tool: dict[str, Any]) -> bool:
    return bool(tool.get("function", {}).get("strict"))
