"""The offline demo models: real builds, real mlx-lm loading and generation (no mocks)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.sample_utils import make_sampler

from inference.worker.testmodels.build import (
    _build_atomically,
    packaged_embeddings_model,
    prepare_demo_models,
)
from inference.worker.testmodels.media import MEDIA_MODELS
from inference.worker.testmodels.text import (
    READY_MARKER,
    SMOLLM2_NAME,
    TINY_RANDOM_NAME,
    TINY_TOOLS_NAME,
    build_smollm2,
    build_tiny_random,
)

UNICODE_SAMPLES = [
    "Hello, world!",
    "  leading spaces, trailing tab\t",
    "naïve café, Grüße, ¿qué tal? 12€",
    "日本語のテキスト 中文 한국어 Ελληνικά Русский",
    "emoji 🚀👍🏽 and ZWJ 👩‍💻, math ∑∫√∞",
    "control \x00\x01\x7f and newlines\r\n\n",
    "Version 3.14159 released 2025-01-31",
]


def _load(path: Path) -> tuple[Any, Any]:
    model, tokenizer = mlx_lm.load(str(path))[:2]
    return model, tokenizer


def _greedy_tokens(model: Any, tokenizer: Any, prompt: list[int], max_tokens: int) -> list[int]:
    return [r.token for r in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=max_tokens)]


def _chat_prompt(tokenizer: Any, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


# --------------------------------------------------------------------------------------
# tiny-random
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    path = build_tiny_random(tmp_path_factory.mktemp("tiny") / TINY_RANDOM_NAME)
    model, tokenizer = _load(path)
    return path, model, tokenizer


def test_tiny_random_is_a_small_llama_labelled_as_test_model(tiny: tuple[Path, Any, Any]) -> None:
    path, model, tokenizer = tiny
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["mlxmanager"]["test_model"] is True
    assert config["max_position_embeddings"] == 2048
    assert config["vocab_size"] == len(tokenizer.get_vocab()) == 512
    assert sum(f.stat().st_size for f in path.iterdir()) < 5_000_000
    logits = model(mx.array([tokenizer.encode("hello")]))
    assert logits.shape[-1] == 512


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_tiny_random_tokenizer_round_trips_unicode(tiny: tuple[Path, Any, Any], text: str) -> None:
    _, _, tokenizer = tiny
    ids = tokenizer.encode(text)
    assert ids
    assert max(ids) < 512
    assert tokenizer.decode(ids) == text


def test_tiny_random_special_tokens_are_atomic(tiny: tuple[Path, Any, Any]) -> None:
    _, _, tokenizer = tiny
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert len(tokenizer.encode(token)) == 1
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in tokenizer.eos_token_ids


def test_tiny_random_chat_template_is_chatml(tiny: tuple[Path, Any, Any]) -> None:
    _, _, tokenizer = tiny
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nAgain<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert without.endswith("<|im_start|>user\nHi<|im_end|>\n")


def test_tiny_random_is_deterministic_in_seed(tiny: tuple[Path, Any, Any], tmp_path: Path) -> None:
    path, model, tokenizer = tiny
    prompt = _chat_prompt(tokenizer, "What is the capital of France?")
    first = _greedy_tokens(model, tokenizer, prompt, max_tokens=20)

    again = build_tiny_random(tmp_path / "again", seed=0)
    model2, tokenizer2 = _load(again)
    assert _greedy_tokens(model2, tokenizer2, prompt, max_tokens=20) == first
    assert (again / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()

    other = build_tiny_random(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (path / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()


def test_tiny_random_greedy_runs_to_max_tokens(tiny: tuple[Path, Any, Any]) -> None:
    _, model, tokenizer = tiny
    prompt = _chat_prompt(tokenizer, "What is the capital of France?")
    responses = list(mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=20))
    assert len(responses) == 20
    assert responses[-1].finish_reason == "length"
    assert not {r.token for r in responses} & set(tokenizer.eos_token_ids)
    text = "".join(r.text for r in responses)
    assert text and text.isascii()


def test_tiny_random_sampling_also_runs_to_max_tokens(tiny: tuple[Path, Any, Any]) -> None:
    _, model, tokenizer = tiny
    prompt = _chat_prompt(tokenizer, "Hi")
    mx.random.seed(1234)
    for temp in (0.7, 1.0, 2.0):
        responses = list(
            mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=100, sampler=make_sampler(temp=temp))
        )
        assert len(responses) == 100
        assert responses[-1].finish_reason == "length"


# --------------------------------------------------------------------------------------
# smollm2-135m-instruct
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    path = build_smollm2(tmp_path_factory.mktemp("smollm2") / SMOLLM2_NAME)
    model, tokenizer = _load(path)
    return path, model, tokenizer


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2: tuple[Path, Any, Any]) -> None:
    _, model, tokenizer = smollm2
    prompt = _chat_prompt(tokenizer, "What is the capital of France?")
    text = mlx_lm.generate(model, tokenizer, prompt, max_tokens=20)
    assert "Paris" in text


def test_smollm2_stays_quantized(smollm2: tuple[Path, Any, Any]) -> None:
    path, model, _ = smollm2
    config = json.loads((path / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert config["rope_traditional"] is True
    assert config["num_hidden_layers"] == 30
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    embed = model.model.embed_tokens
    q_proj = model.model.layers[0].self_attn.q_proj
    assert (embed.bits, embed.group_size) == (8, 32)
    assert (q_proj.bits, q_proj.group_size) == (4, 32)
    # Well under the ~270 MB a float16 copy would take.
    assert (path / "model.safetensors").stat().st_size < 150_000_000


def test_smollm2_tokenizer_matches_the_original(smollm2: tuple[Path, Any, Any]) -> None:
    path, _, tokenizer = smollm2
    assert tokenizer.encode("<|endoftext|>") == [0]
    assert tokenizer.encode("<|im_start|>") == [1]
    assert tokenizer.encode("<|im_end|>") == [2]
    assert tokenizer.eos_token == "<|im_end|>"
    assert set(tokenizer.eos_token_ids) == {2}

    added = json.loads((path / "tokenizer.json").read_text())["added_tokens"]
    assert len(added) == 17
    assert all(token["special"] for token in added)

    # SmolLM2 splits digits one by one and keeps a leading space on the following word.
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode("Year 2024 ok"))
    assert pieces == ["Year", "Ġ", "2", "0", "2", "4", "Ġok"]
    for text in UNICODE_SAMPLES:
        assert tokenizer.decode(tokenizer.encode(text)) == text

    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


# --------------------------------------------------------------------------------------
# prepare_demo_models
# --------------------------------------------------------------------------------------


def _leftovers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir() if p.name.startswith("."))


def test_prepare_builds_once_and_replaces_half_models(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    # A directory from an old, interrupted build: no marker, so it must be rebuilt.
    half = models_dir / TINY_RANDOM_NAME
    half.mkdir(parents=True)
    (half / "junk").write_text("partial")

    messages: list[str] = []
    paths = prepare_demo_models(tmp_path, log=messages.append)
    # all-MiniLM-L6-v2 is served from its package, not built: it is listed when installed.
    assert paths.pop("all-minilm-l6-v2", None) == packaged_embeddings_model()
    names = [SMOLLM2_NAME, TINY_RANDOM_NAME, TINY_TOOLS_NAME, *MEDIA_MODELS]
    assert paths == {name: models_dir / name for name in names}
    for path in paths.values():
        assert (path / READY_MARKER).is_file()
        assert (path / "config.json").is_file()
    assert not (half / "junk").exists()
    assert _leftovers(models_dir) == []
    markers = {name: (p / READY_MARKER).read_text() for name, p in paths.items()}

    messages.clear()
    again = prepare_demo_models(tmp_path, log=messages.append)
    again.pop("all-minilm-l6-v2", None)
    assert again == paths
    assert all("already present" in m for m in messages)
    assert {name: (p / READY_MARKER).read_text() for name, p in paths.items()} == markers

    prepare_demo_models(tmp_path, force=True, log=messages.append)
    assert {name: (p / READY_MARKER).read_text() for name, p in paths.items()} != markers
    assert _leftovers(models_dir) == []
    _load(paths[TINY_RANDOM_NAME])


def test_interrupted_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def crashing_build(dest: Path) -> Path:
        build_tiny_random(dest)
        raise KeyboardInterrupt  # e.g. Ctrl-C after the weights were written

    dest = tmp_path / "models" / TINY_RANDOM_NAME
    with pytest.raises(KeyboardInterrupt):
        _build_atomically(TINY_RANDOM_NAME, crashing_build, dest, False, print)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


@pytest.fixture(autouse=True)
def _no_global_seed_leak() -> Iterator[None]:
    # Sampling tests seed MLX's global PRNG; reseed afterwards so test order doesn't matter.
    yield
    mx.random.seed(0)


def test_a_media_model_whose_asset_is_missing_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Whisper vocabulary comes from an optional package: without it `make run` still works."""
    from inference.worker.testmodels import media as media_models

    def missing(dest: Path, seed: int = 0) -> Path:
        raise FileNotFoundError("Whisper's vocabulary is missing")

    monkeypatch.setitem(media_models.MEDIA_MODELS, media_models.TINY_WHISPER_NAME, missing)
    monkeypatch.setattr(
        "inference.worker.testmodels.build.DEMO_MODELS", {TINY_RANDOM_NAME: build_tiny_random}
    )
    for name in list(media_models.MEDIA_MODELS):
        if name != media_models.TINY_WHISPER_NAME:
            monkeypatch.delitem(media_models.MEDIA_MODELS, name)
    messages: list[str] = []
    paths = prepare_demo_models(tmp_path, log=messages.append)
    assert media_models.TINY_WHISPER_NAME not in paths and TINY_RANDOM_NAME in paths
    assert any(m.startswith("skipped tiny-whisper") for m in messages)
    assert _leftovers(tmp_path / "models") == []
