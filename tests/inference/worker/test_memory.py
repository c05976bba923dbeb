"""The memory budget's settings and size estimates (inference/worker/memory.py)."""

from __future__ import annotations

import json
import sys
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


SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
           "intermediate_size": 1536, "vocab_size": 49152}  # fmt: skip
MB = 1_000_000


def test_a_prefill_steps_transient_is_estimated_at_or_above_what_was_measured() -> None:
    # mx.get_peak_memory over a BatchGenerator prefill of SmolLM2-135M f32, less the weights and
    # the caches after the step (memory.prefill_transient_bytes' docstring): rows, chunk, context.
    measured = {(1, 512, 1564): 40, (3, 512, 1564): 124, (3, 128, 1564): 52, (8, 512, 1564): 323,
                (3, 512, 4000): 262}  # fmt: skip
    for (rows, chunk, context), mb in measured.items():
        estimate = memory.prefill_transient_bytes(SMOLLM2, rows=rows, chunk=chunk, context=context)
        assert mb * MB * 0.9 <= estimate <= mb * MB * 1.45, (rows, chunk, context, estimate)
    plain = memory.prefill_transient_bytes(SMOLLM2, rows=1, chunk=100, context=1000)
    with_logits = memory.prefill_transient_bytes(SMOLLM2, rows=1, chunk=100, context=1000, logits=True)
    assert with_logits - plain == 100 * 49152 * 4  # every position's float32 logits


def test_the_prefill_chunk_is_cut_to_the_memory_left() -> None:
    def transient(chunk: int) -> int:
        return memory.prefill_transient_bytes(SMOLLM2, rows=3, chunk=chunk, context=1564)

    assert memory.prefill_chunk_for(SMOLLM2, rows=3, context=1564, room=10**12, most=512) == 512
    room = transient(200) + 1
    chunk = memory.prefill_chunk_for(SMOLLM2, rows=3, context=1564, room=room, most=512)
    assert chunk == 200 and transient(chunk) <= room < transient(chunk + 1)
    assert (
        memory.prefill_chunk_for(SMOLLM2, rows=3, context=1564, room=0, most=512) == memory.MIN_MEMORY_CHUNK
    )
    assert memory.prefill_chunk_for(SMOLLM2, rows=3, context=1564, room=10**12, most=64) == 64


def test_the_process_share_settings() -> None:
    assert memory.headroom_bytes(1000, {}) == 50  # 5% by default
    assert memory.headroom_bytes(1000, {"MLXM_MEMORY_HEADROOM": "10%"}) == 100
    assert memory.headroom_bytes(10**9, {"MLXM_MEMORY_HEADROOM": "64MB"}) == 64 * MB
    assert memory.headroom_bytes(1000, {"MLXM_MEMORY_HEADROOM": "0"}) == 0
    with pytest.raises(ValueError, match="MLXM_MEMORY_HEADROOM"):
        memory.headroom_bytes(1000, {"MLXM_MEMORY_HEADROOM": "lots"})
    assert memory.count_process({}) is True
    assert memory.count_process({"MLXM_MEMORY_COUNT_PROCESS": "off"}) is False
    assert memory.count_process({"MLXM_MEMORY_COUNT_PROCESS": "1"}) is True


def test_the_runtime_is_the_resident_memory_mlx_does_not_hold() -> None:
    import mlx.core as mx

    rss = memory.resident_bytes()
    if rss is None:
        pytest.skip("no /proc here")
    runtime = memory.runtime_bytes()
    assert 0 < runtime <= memory.resident_bytes()  # type: ignore[operator]
    held = mx.ones((8_000_000,))  # 32 MB held by MLX: resident, but not the runtime's
    mx.eval(held)
    assert memory.runtime_bytes() < runtime + 16 * MB
    del held


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_the_heap_can_be_trimmed_on_linux() -> None:
    assert memory.trim_heap() is True
