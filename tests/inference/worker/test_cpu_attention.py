"""Batched decode attention on the CPU: same results as MLX's own, taken only where it applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.models import base

from inference.worker import cpu_attention


def qkv(
    batch: int, heads: int, groups: int, length: int, new: int = 1
) -> tuple[mx.array, mx.array, mx.array]:
    mx.random.seed(batch * 100 + length)
    return (
        mx.random.normal((batch, heads, new, 16)),
        mx.random.normal((batch, groups, length, 16)),
        mx.random.normal((batch, groups, length, 16)),
    )


@pytest.mark.parametrize(("heads", "groups"), [(6, 2), (4, 4), (8, 1)])
def test_same_results_as_mlx(heads: int, groups: int) -> None:
    q, k, v = qkv(3, heads, groups, 40)
    left_padding = mx.array([0, 5, 12])  # a batch's rows are left-padded to one length
    bool_mask = (mx.expand_dims(left_padding, (1, 2, 3)) <= mx.arange(40))[:, :, :, :]
    additive = mx.where(bool_mask, 0.0, -1e9)
    for mask in (None, bool_mask, additive):
        ours = cpu_attention.grouped_decode_attention(q, k, v, 0.25, mask)
        theirs = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
        assert ours.shape == theirs.shape == (3, heads, 1, 16)
        assert mx.allclose(ours, theirs, atol=1e-5).item()


def test_values_narrower_than_keys() -> None:
    """Some architectures (e.g. DeepSeek's latent attention) have value heads of another size."""
    q, k, _ = qkv(2, 4, 2, 12)
    v = mx.random.normal((2, 2, 12, 8))
    ours = cpu_attention.grouped_decode_attention(q, k, v, 0.25, None)
    theirs = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=None)
    assert ours.shape == theirs.shape == (2, 4, 1, 8)
    assert mx.allclose(ours, theirs, atol=1e-5).item()


def test_taken_only_for_a_decode_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def ours(q: mx.array, *args: Any) -> mx.array:
        calls.append("ours")
        return mx.zeros(q.shape)

    def mlx_lm(q: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        calls.append("mlx-lm")
        return mx.zeros(q.shape)

    monkeypatch.setattr(cpu_attention, "grouped_decode_attention", ours)
    monkeypatch.setattr(base, "scaled_dot_product_attention", mlx_lm)

    class QuantizedCache:
        bits = 8

    q, k, v = qkv(2, 6, 2, 30)
    row_mask = mx.ones((2, 1, 1, 30), dtype=mx.bool_)
    cpu_attention.attention(q, k, v, None, 0.25, None)
    cpu_attention.attention(q, k, v, None, 0.25, row_mask)
    cpu_attention.attention(*qkv(1, 6, 2, 30), None, 0.25, None)  # a lone stream's step
    assert calls == ["ours"] * 3
    calls.clear()
    prefill = qkv(2, 6, 2, 30, new=5)
    cpu_attention.attention(*prefill, None, 0.25, "causal")
    cpu_attention.attention(*prefill, None, 0.25, mx.ones((2, 1, 5, 30), dtype=mx.bool_))
    cpu_attention.attention(q, k, v, None, 0.25, None, sinks=mx.zeros((6,)))
    packed = (k, k, k)  # what a quantized cache holds: (values, scales, biases)
    cpu_attention.attention(q, packed, packed, QuantizedCache(), 0.25, None)
    assert calls == ["mlx-lm"] * 4


def test_a_loaded_model_is_routed_and_the_switch_turns_it_off(
    demo_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = load(str(demo_models["tiny-random"]))[:2]
    module = __import__(type(model).__module__, fromlist=["_"])
    monkeypatch.setattr(module, "scaled_dot_product_attention", base.scaled_dot_product_attention)
    assert cpu_attention.use_for(model) == 1
    assert module.scaled_dot_product_attention is cpu_attention.attention
    assert cpu_attention.use_for(model) == 1  # idempotent
    monkeypatch.setenv("MLXM_CPU_ATTENTION", "0")
    assert not cpu_attention.enabled()
    monkeypatch.setenv("MLXM_CPU_ATTENTION", "1")
    assert cpu_attention.enabled()
