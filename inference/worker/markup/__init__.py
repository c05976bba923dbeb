"""Reasoning and tool-call markup in generated text: which format a model uses, and a
per-request parser that splits the stream into content, reasoning and tool-call deltas.

mlx-lm does the inference and the matching: `TokenizerWrapper` knows the think tags and the
tool parser (from the chat template), `make_text_state_machine` strips the markers and
tells which state each piece of text is in, and `mlx_lm.tool_parsers` turn a finished call
into a name and arguments. What this module adds: profile overrides, a Llama 3 JSON
parser (mlx-lm has none), tools injected into the prompt for models without native tool
support, and streaming of JSON arguments while they are generated.
"""

from inference.worker.markup.formats import (
    INJECTED,
    LLAMA3_JSON,
    NO_TOOLS,
    THINK_TAGS,
    Markup,
    MarkupError,
    ToolFormat,
    inject_tools,
    parse_llama3_json,
    resolve_markup,
    tool_format,
)
from inference.worker.markup.parser import Delta, OutputParser, new_call_id

__all__ = ["INJECTED", "LLAMA3_JSON", "NO_TOOLS", "THINK_TAGS", "Delta", "Markup", "MarkupError", "OutputParser",
           "ToolFormat", "inject_tools", "new_call_id", "parse_llama3_json", "resolve_markup", "tool_format"]  # fmt: skip
