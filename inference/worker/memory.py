"""The worker's memory budget: its settings, and what weights and KV caches take.

One limit (`MLXM_MEMORY_LIMIT`) covers the loaded weights, the live requests' KV caches and
the prompt caches together (the pool keeps it, `inference/worker/pool.py`). This module holds
its settings (the limit's parsing is `inference/env.py`'s, shared with the web side), a
model's weight sizes read from its safetensors headers (what it will take once loaded,
dequantized or not), the KV bytes a token costs from a model's config, and what MLX reports
(`mlx_memory`, the only function here that imports MLX).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The limit's parsing is shared with the web side (the downloads page flags models too large).
from inference.env import DEFAULT_LIMIT_SHARE, memory_limit_from_env, parse_size, physical_memory

__all__ = ["DEFAULT_LIMIT_SHARE", "memory_limit_from_env", "parse_size", "physical_memory"]

DEFAULT_PROMPT_CACHE_BYTES = 512 * 1024 * 1024  # per model
# mlx-lm's KVCache grows in steps of this many tokens.
KV_STEP = 256
DEFAULT_HEADROOM_PERCENT = 5
# Under memory pressure a prefill chunk is cut down to this many tokens, no further.
MIN_MEMORY_CHUNK = 16

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def prompt_cache_bytes_from_env(limit: int, env: Any = None) -> int:
    """MLXM_PROMPT_CACHE_BYTES: each model's prompt-cache share (bytes, a size, or a percentage
    of the memory limit); 512 MiB by default."""
    env = os.environ if env is None else env
    raw = env.get("MLXM_PROMPT_CACHE_BYTES")
    if not raw:
        return DEFAULT_PROMPT_CACHE_BYTES
    return parse_size(raw, of=limit, name="MLXM_PROMPT_CACHE_BYTES")


def memory_wait_s(env: Any = None) -> float:
    """MLXM_MEMORY_WAIT_S: how long a request waits for KV room while others run (default 30)."""
    env = os.environ if env is None else env
    return float(env.get("MLXM_MEMORY_WAIT_S") or 30)


def use_float32() -> bool:
    """Half-precision math is slow on CPUs without native fp16 (Linux, mlx[cpu])."""
    setting = os.environ.get("MLXM_CPU_FLOAT32", "auto").lower()
    if setting in {"0", "false", "no", "off"}:
        return False
    return setting in {"1", "true", "yes", "on"} or sys.platform != "darwin"


def cpu_dequantize_mode() -> str:
    """MLXM_CPU_DEQUANTIZE: "auto" (default: when the float32 weights fit the budget), "off"
    (keep quantized models quantized) or "on" (always, budget permitting or not)."""
    raw = os.environ.get("MLXM_CPU_DEQUANTIZE", "auto").strip().lower()
    if raw in {"0", "false", "no", "off"}:
        return "off"
    if raw in {"1", "true", "yes", "on", "always"}:
        return "on"
    return "auto"


# ---- weights -------------------------------------------------------------------------------


def read_config(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tensors(path: Path) -> list[tuple[str, str, int]]:
    """(name, dtype, element count) of every tensor in a model directory's safetensors files."""
    out: list[tuple[str, str, int]] = []
    for file in sorted(path.glob("*.safetensors")):
        try:
            with file.open("rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error):
            continue
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            count = 1
            for dim in info.get("shape", []):
                count *= int(dim)
            out.append((name, str(info.get("dtype", "F32")), count))
    return out


def _bits_for(quant: dict[str, Any], module: str) -> int | None:
    """A quantized module's bits from config["quantization"] (per-module overrides first)."""
    override = quant.get(module)
    if override is False:
        return None
    if isinstance(override, dict):
        return int(override.get("bits") or quant.get("bits") or 4)
    return int(quant.get("bits") or 4)


@dataclass(frozen=True)
class WeightSizes:
    """What a model directory's weights take: on disk, loaded as they are (half precision cast
    up to float32 when `float32` was asked), and fully dequantized to float32."""

    file_bytes: int
    loaded_bytes: int
    float32_bytes: int
    bits: int | None  # the quantization's bits (the most common one), None when not quantized
    dtype: str  # the float dtype of the unquantized tensors ("float16", ...)


def weight_sizes(path: str | Path, *, float32: bool) -> WeightSizes:
    path = Path(path)
    config = read_config(path)
    quant = config.get("quantization") or config.get("quantization_config") or {}
    if not isinstance(quant, dict) or "bits" not in quant:
        quant = {}
    tensors = _tensors(path)
    packed = {n[: -len(".weight")] for n, dtype, _ in tensors if dtype == "U32" and n.endswith(".weight")}
    file_bytes = loaded = f32 = 0
    bits_seen: dict[int, int] = {}
    dtypes: dict[str, int] = {}
    for name, dtype, count in tensors:
        size = count * _DTYPE_BYTES.get(dtype, 4)
        file_bytes += size
        module, _, leaf = name.rpartition(".")
        if module in packed and quant:
            bits = _bits_for(quant, module) or 4
            if leaf == "weight":
                loaded += size
                f32 += count * (32 // bits) * 4
                bits_seen[bits] = bits_seen.get(bits, 0) + count
            else:  # scales and biases: gone once dequantized
                loaded += count * 4 if float32 and dtype in ("F16", "BF16") else size
            continue
        if dtype in ("F16", "BF16", "F32", "F64"):
            dtypes[dtype] = dtypes.get(dtype, 0) + count
            loaded += count * 4 if float32 and dtype in ("F16", "BF16") else size
            f32 += count * 4
        else:
            loaded += size
            f32 += size
    common = max(bits_seen, key=lambda b: bits_seen[b]) if bits_seen else None
    dtype = _DTYPE_NAMES.get(max(dtypes, key=lambda d: dtypes[d]), "float32") if dtypes else "float32"
    return WeightSizes(file_bytes, loaded, f32, common, dtype)


# ---- KV cache ------------------------------------------------------------------------------


def kv_bytes_per_token(config: dict[str, Any], dtype_bytes: int, kv_bits: int | None = None) -> int:
    """KV-cache bytes one token takes across the model's layers: keys and values of every
    layer's KV heads. Sliding-window and recurrent layers are counted as full attention
    (conservative: they take at most that)."""
    text = config.get("text_config")
    cfg = {**config, **text} if isinstance(text, dict) else config
    layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers") or 0)
    heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or 1)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    hidden = int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
    head_dim = int(cfg.get("head_dim") or (hidden // max(1, heads)))
    elements = 2 * layers * kv_heads * head_dim
    if kv_bits is not None:  # packed values plus a scale and a bias per group of 64
        return int(elements * (kv_bits / 8 + 2 * dtype_bytes / 64))
    return elements * dtype_bytes


def prefill_transient_bytes(
    config: dict[str, Any], *, rows: int, chunk: int, context: int, logits: bool = False
) -> int:
    """What one prefill step takes for a moment beyond the weights and the KV caches: `rows`
    prompts advancing `chunk` tokens each against up to `context` tokens of cache.

    Per layer, freed before the next: the attention scores and their softmax (float32, one per
    query head: on the CPU `scaled_dot_product_attention` has no fused kernel and materialises
    them), the MLP's three intermediate activations, hidden-size activations (a dozen: norms,
    projections, residuals, masks and positions), and the
    layer's KV buffer while a growing cache is copied into a longer one. Measured with
    SmolLM2-135M float32 (mx.get_peak_memory over a BatchGenerator prefill, less the weights and
    the caches after the step; `logits`: the step computes every position's logits too, as
    mlx-lm's generate_step does for a prompt's last chunk): 40 MB for 1 row of 512 tokens at 1,564; 124 MB for 3 rows;
    52 MB for 3 rows of 128; 323 MB for 8 rows of 512; 262 MB for 3 rows of 512 at 4,000. This
    estimate gives 56, 167, 49, 445 and 312 MB: about as much or more, as a reserve should be."""
    text = config.get("text_config")
    cfg = {**config, **text} if isinstance(text, dict) else config
    heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or 1)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    hidden = int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
    head_dim = int(cfg.get("head_dim") or (hidden // max(1, heads)))
    inner = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden)
    vocab = int(cfg.get("vocab_size") or 0) if logits else 0
    rows, chunk, context = max(1, rows), max(1, chunk), max(1, context)
    per_query = 4 * (heads * context + 3 * inner + 12 * hidden + vocab)
    growth = 2 * rows * kv_heads * (kv_tokens(context) + KV_STEP) * head_dim * 4
    return rows * chunk * per_query + growth


def prefill_chunk_for(config: dict[str, Any], *, rows: int, context: int, room: int, most: int) -> int:
    """The longest prefill chunk (at most `most` tokens, at least MIN_MEMORY_CHUNK) whose
    transient (`prefill_transient_bytes`) fits in `room` bytes."""
    if prefill_transient_bytes(config, rows=rows, chunk=most, context=context) <= room:
        return most
    fixed = prefill_transient_bytes(config, rows=rows, chunk=1, context=context)
    per_token = prefill_transient_bytes(config, rows=rows, chunk=2, context=context) - fixed
    fits = (room - fixed) // max(1, per_token) + 1
    return int(max(MIN_MEMORY_CHUNK, min(most, fits)))


def kv_tokens(tokens: int) -> int:
    """Tokens a cache of `tokens` holds room for: mlx-lm grows it KV_STEP at a time."""
    return -(-max(1, tokens) // KV_STEP) * KV_STEP


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux: /proc), or None where it can't be read."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def runtime_bytes() -> int:
    """What the process holds beyond MLX's live arrays: Python, the libraries, tokenizers,
    thread stacks, MLX's buffer cache (resident memory less MLX's active count). 0 where
    resident memory can't be read."""
    rss = resident_bytes()
    if rss is None:
        return 0
    return max(0, rss - mlx_memory().get("mlx_active_bytes", 0))


def count_process(env: Any = None) -> bool:
    """MLXM_MEMORY_COUNT_PROCESS: whether the worker's limit covers its own process too (its
    runtime, the disk tier's pending copies and MLXM_MEMORY_HEADROOM); on by default. Off, the
    limit covers weights, KV caches and prompt caches only."""
    env = os.environ if env is None else env
    return str(env.get("MLXM_MEMORY_COUNT_PROCESS", "on")).strip().lower() not in {"0", "false", "no", "off"}


def headroom_bytes(limit: int, env: Any = None) -> int:
    """MLXM_MEMORY_HEADROOM: the part of the limit kept free for what is not measured ahead
    (the process's own growth under load, a step's activations beyond their estimate): bytes,
    a size or a percentage of the limit; 5% by default."""
    env = os.environ if env is None else env
    raw = env.get("MLXM_MEMORY_HEADROOM")
    if not raw:
        return limit * DEFAULT_HEADROOM_PERCENT // 100
    return parse_size(raw, of=limit, name="MLXM_MEMORY_HEADROOM")


def trim_heap() -> bool:
    """glibc only: give the heap's free pages back to the system (`malloc_trim`). Prefill's
    large activations are carved from the heap once glibc's mmap threshold has risen to the
    largest block freed, and stay resident after being freed: measured in the team benchmark's
    (i), 1.24 GB resident for 0.69 GB of MLX arrays. That memory counts in the runtime (resident
    less MLX's arrays) until this gives it back; the pool calls it when the limit is near, not
    on every step (pages given back are faulted in again by the next step that needs them:
    a fixed 1 MiB mmap threshold, which does that for every large block, cost ~20% of
    SmolLM2's batched throughput). True when it ran."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        malloc_trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
    malloc_trim(0)
    return True


def mlx_memory() -> dict[str, int]:
    """What MLX reports it holds (active arrays, its buffer cache, the peak since start); on
    mlx[cpu] as on Metal. Empty when MLX can't say."""
    try:
        import mlx.core as mx

        return {
            "mlx_active_bytes": int(mx.get_active_memory()),
            "mlx_cache_bytes": int(mx.get_cache_memory()),
            "mlx_peak_bytes": int(mx.get_peak_memory()),
        }
    except Exception:  # noqa: BLE001 - an older MLX without these calls
        return {}
