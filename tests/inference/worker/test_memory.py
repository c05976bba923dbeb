"""The memory budget's settings and size estimates (inference/worker/memory.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.worker import memory


def test_prompt_cache_share_forms() -> None:
    limit = 8 * 1000**3
    assert memory.prompt_cache_bytes_from_env(limit, {}) == 512 << 20
    assert memory.prompt_cache_bytes_from_env(limit, {"MLXM_PROMPT_CACHE_BYTES": "25%"}) == limit // 4
    assert memory.prompt_cache_bytes_from_env(limit, {"MLXM_PROMPT_CACHE_BYTES": "2GB"}) == 2 * 1000**3
    with pytest.raises(ValueError, match="MLXM_PROMPT_CACHE_BYTES"):
        memory.prompt_cache_bytes_from_env(limit, {"MLXM_PROMPT_CACHE_BYTES": "lots"})


def test_kv_bytes_per_token_from_the_config() -> None:
    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}
    # Keys and values, per layer, per KV head, per head dimension.
    assert memory.kv_bytes_per_token(config, 2) == 2 * 30 * 3 * 64 * 2
    # No head_dim: hidden_size / heads; no KV heads: as many as attention heads.
    assert memory.kv_bytes_per_token(
        {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}, 4
    ) == (2 * 2 * 4 * 16 * 4)
    # A vision model's text tower.
    nested = {"text_config": config}
    assert memory.kv_bytes_per_token(nested, 2) == memory.kv_bytes_per_token(config, 2)
    # A quantized KV cache takes less.
    assert memory.kv_bytes_per_token(config, 2, kv_bits=4) < memory.kv_bytes_per_token(config, 2)


def test_kv_tokens_round_up_to_the_cache_step() -> None:
    assert memory.kv_tokens(1) == memory.KV_STEP
    assert memory.kv_tokens(memory.KV_STEP) == memory.KV_STEP
    assert memory.kv_tokens(memory.KV_STEP + 1) == 2 * memory.KV_STEP


def test_weight_sizes_of_a_float_model(demo_models: dict[str, Path]) -> None:
    path = demo_models["tiny-random"]
    sizes = memory.weight_sizes(path, float32=True)
    on_disk = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    assert sizes.bits is None
    assert sizes.dtype == "float32"
    # float32 throughout: loaded and dequantized are the tensors' bytes (the file less its header).
    assert sizes.loaded_bytes == sizes.float32_bytes == sizes.file_bytes
    assert 0 < on_disk - sizes.file_bytes < 10_000


def test_weight_sizes_of_a_quantized_model(demo_models: dict[str, Path]) -> None:
    path = demo_models["smollm2-135m-instruct"]
    sizes = memory.weight_sizes(path, float32=True)
    config = json.loads((path / "config.json").read_text())
    assert sizes.bits == config["quantization"]["bits"]
    assert sizes.loaded_bytes < sizes.float32_bytes
    # Float32 is 4 bytes for each of the model's parameters (embedding x hidden size at least).
    assert sizes.float32_bytes > config["vocab_size"] * config["hidden_size"] * 4


def test_mlx_reports_its_memory() -> None:
    import mlx.core as mx

    a = mx.ones((256, 256))
    mx.eval(a)
    seen = memory.mlx_memory()
    assert seen["mlx_active_bytes"] >= a.nbytes
    assert seen["mlx_peak_bytes"] >= seen["mlx_active_bytes"]
