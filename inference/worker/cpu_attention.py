"""Decode-step attention for grouped-query models on the CPU.

On the CPU, `mx.fast.scaled_dot_product_attention` has no fused kernel: its fallback runs a
grouped-query model's attention with the keys and values broadcast to every query head, so a
decode step (one new token per row, a long KV cache behind each) reads and copies that cache
several times over. Stacking the query heads of a group as rows of one matrix product against
their shared keys (`grouped_decode_attention`) does the same arithmetic (same tokens) in
about two thirds of the time: SmolLM2's 9 query heads on 3 KV heads, per layer, 0.53 -> 0.35
ms for one row at 1,650 tokens, 5.1 -> 3.3 ms at 18,000; 2.8 -> 1.9 ms for 5 rows at 1,650.
A whole batched decode step of SmolLM2 f32 at 1,650 tokens: 0.83-0.88x the time.

`use_for(model)` points the model's modules at `attention` (mlx-lm's models call
`scaled_dot_product_attention` from their own module), which takes that path for decode
steps and leaves everything else (prefill, quantized caches, attention sinks, masks other
than one row of keys per sequence) to mlx-lm's function. Opt out with MLXM_CPU_ATTENTION=0.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import mlx.core as mx
from mlx_lm.models import base


def enabled() -> bool:
    setting = os.environ.get("MLXM_CPU_ATTENTION", "auto").lower()
    if setting in {"0", "false", "no", "off"}:
        return False
    return setting in {"1", "true", "yes", "on"} or mx.default_device() == mx.cpu


def grouped_decode_attention(
    queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: mx.array | None
) -> mx.array:
    """Attention of one new token per row: queries (B, H, 1, D), keys/values (B, KVH, L, D)."""
    batch, heads, length, dim = queries.shape
    groups = keys.shape[1]
    q = (queries * scale).reshape(batch, groups, heads // groups * length, dim)
    scores = q @ keys.swapaxes(-1, -2)
    if mask is not None:  # (B, 1, 1, L): broadcasts over the groups and their heads
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    probs = mx.softmax(scores, axis=-1, precise=True)
    return (probs @ values).reshape(batch, heads, length, values.shape[-1])


def attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    cache: Any,
    scale: float,
    mask: mx.array | str | None,
    sinks: mx.array | None = None,
) -> mx.array:
    """mlx-lm's `scaled_dot_product_attention`, with decode steps on the path above."""
    if (
        sinks is None
        and not hasattr(cache, "bits")  # a quantized cache: keys and values are tuples
        and isinstance(keys, mx.array)
        and not isinstance(mask, str)
        and queries.shape[2] == 1
        and queries.shape[1] % keys.shape[1] == 0
        and (mask is None or (mask.shape[-2] == 1 and (mask.ndim < 4 or mask.shape[1] == 1)))
    ):
        return grouped_decode_attention(queries, keys, values, scale, mask)
    fallback: Any = base.scaled_dot_product_attention  # its mask is typed as an array only
    return fallback(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)


def use_for(model: Any) -> int:
    """Route `model`'s attention through `attention`: every module defining one of its layers
    that calls mlx-lm's shared function. Returns how many modules do now."""
    routed = 0
    for name in {type(m).__module__ for m in model.modules()}:
        module = sys.modules.get(name)
        current = getattr(module, "scaled_dot_product_attention", None)
        if current is base.scaled_dot_product_attention:
            module.scaled_dot_product_attention = attention  # type: ignore[union-attr]
        routed += current is base.scaled_dot_product_attention or current is attention
    return routed
