"""Fixtures: a fake hub with a few model repos, isolated data dirs, users, a download manager."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from huggingface_hub import constants as hf_constants

from tests.mlxmanager.downloads.fakehub import FakeHub

GiB = 1024**3

QWEN = "mlx-community/Qwen3-0.6B-4bit"
EMBED = "mlx-community/bge-small-en-v1.5-bf16"
VISION = "mlx-community/Qwen2.5-VL-3B-Instruct-4bit"
WHISPER = "mlx-community/whisper-tiny"
KOKORO = "mlx-community/Kokoro-82M-bf16"
GATED = "meta-llama/Llama-3.2-1B-Instruct"
BIN_ONLY = "acme/pytorch-only"
BIG = "mlx-community/Big-Model-4bit"

QWEN_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n{%- for tool in tools %}{{ tool | tojson }}{%- endfor %}"
    "{%- endif %}{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}"
    "{%- endif %}"
)


def payload(size: int, seed: int) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    block = seed.to_bytes(4, "little")
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def add_standard_repos(hub: FakeHub) -> None:
    hub.add_repo(
        QWEN,
        {
            "config.json": {
                "model_type": "qwen3",
                "architectures": ["Qwen3ForCausalLM"],
                "quantization": {"group_size": 64, "bits": 4},
                "max_position_embeddings": 40960,
                "torch_dtype": "bfloat16",
                "vocab_size": 151936,
            },
            "tokenizer_config.json": {"chat_template": QWEN_TEMPLATE, "eos_token": "<|im_end|>"},
            "tokenizer.json": {"version": "1.0"},
            "model.safetensors": payload(300_000, 1),
            "README.md": "# Qwen3 0.6B 4-bit\n",
            "pytorch_model.bin": payload(50_000, 99),
        },
        tags=["mlx", "safetensors", "qwen3", "text-generation"],
        library_name="mlx",
        pipeline_tag="text-generation",
        downloads=50_000,
        likes=120,
        parameters={"BF16": 20_000, "U32": 70_000},
        last_modified=datetime(2025, 7, 30, tzinfo=UTC),
    )
    hub.add_repo(
        EMBED,
        {
            "config.json": {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 384},
            "modules.json": [{"idx": 0, "type": "sentence_transformers.models.Transformer"}],
            "1_Pooling/config.json": {"pooling_mode_cls_token": True},
            "model.safetensors": payload(120_000, 2),
        },
        tags=["mlx", "feature-extraction", "sentence-transformers"],
        library_name="mlx",
        pipeline_tag="feature-extraction",
        downloads=9_000,
        last_modified=datetime(2025, 3, 12, tzinfo=UTC),
    )
    hub.add_repo(
        VISION,
        {
            "config.json": {
                "model_type": "qwen2_5_vl",
                "architectures": ["Qwen2_5_VLForConditionalGeneration"],
                "vision_config": {"depth": 32},
                "quantization": {"group_size": 64, "bits": 4},
                "text_config": {"max_position_embeddings": 128000},
            },
            "chat_template.json": {"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
            "model.safetensors": payload(200_000, 3),
        },
        tags=["mlx", "image-text-to-text"],
        library_name="mlx",
        pipeline_tag="image-text-to-text",
        downloads=20_000,
        parameters={"BF16": 500_000, "U32": 2_000_000},
        last_modified=datetime(2025, 5, 20, tzinfo=UTC),
    )
    hub.add_repo(
        WHISPER,
        {
            "config.json": {"n_mels": 80, "n_audio_ctx": 1500, "n_vocab": 51865},
            "weights.safetensors": payload(80_000, 4),
        },
        tags=["mlx", "automatic-speech-recognition"],
        library_name="mlx",
        pipeline_tag="automatic-speech-recognition",
        downloads=7_000,
        last_modified=datetime(2024, 11, 2, tzinfo=UTC),
    )
    hub.add_repo(
        KOKORO,
        {
            "config.json": {"model_type": "kokoro", "istftnet": {"upsample_kernel_sizes": [20, 12]}},
            "kokoro-v1_0.safetensors": payload(60_000, 5),
        },
        tags=["mlx", "text-to-speech"],
        library_name="mlx",
        pipeline_tag="text-to-speech",
        downloads=3_000,
        last_modified=datetime(2025, 2, 14, tzinfo=UTC),
    )
    hub.add_repo(
        GATED,
        {
            "config.json": {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
            "model.safetensors": payload(90_000, 6),
        },
        tags=["transformers", "llama", "text-generation"],
        library_name="transformers",
        pipeline_tag="text-generation",
        downloads=1_000_000,
        gated="manual",
        last_modified=datetime(2024, 9, 25, tzinfo=UTC),
    )
    hub.add_repo(
        BIN_ONLY,
        {
            "config.json": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
            "pytorch_model.bin": b"x" * 10,
        },
        tags=["transformers", "text-generation"],
        library_name="transformers",
        pipeline_tag="text-generation",
        downloads=10,
        last_modified=datetime(2023, 3, 1, tzinfo=UTC),
    )
    hub.add_repo(
        BIG,
        {
            "config.json": {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "quantization": {"group_size": 32, "bits": 8},
            },
            "tokenizer.json": {"version": "1.0"},
            "model-00001-of-00002.safetensors": payload(400_000, 7),
            "model-00002-of-00002.safetensors": payload(300_000, 8),
        },
        tags=["mlx", "text-generation"],
        library_name="mlx",
        pipeline_tag="text-generation",
        downloads=100,
        last_modified=datetime(2025, 6, 1, tzinfo=UTC),
    )


@pytest.fixture
def fakehub() -> Iterator[FakeHub]:
    from mlxmanager.downloads import hub as hub_calls

    hub = FakeHub().start()
    add_standard_repos(hub)
    yield hub
    # A call a test gave up on goes on retrying in its thread; against a stopped hub it would
    # outlive the test, and huggingface_hub closes its shared client on a connection error,
    # cutting the next test's transfers. Let it finish against a live hub first.
    if hub._server is None:
        hub.start()
    assert hub_calls.wait_idle(60), "a hub call is still running"
    hub.stop()


@pytest.fixture(autouse=True)
def hub_settings(settings: Any, fakehub: FakeHub, tmp_path: Path) -> dict[str, Path]:
    """Every test gets its own data dir, models dir and Hugging Face cache, and the fake hub."""
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    settings.MLXM_HF_ENDPOINT = fakehub.url
    settings.MLXM_HF_TOKEN = None
    settings.MLXM_DATA_DIR = data
    settings.MLXM_MODELS_DIR = data / "models"
    settings.MLXM_HF_CACHE_DIR = tmp_path / "hf-cache"
    settings.MLXM_MODEL_DIRS = []
    settings.MLXM_MEMORY_LIMIT_BYTES = 1 * GiB
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    return {"data": data, "models": data / "models", "hf_cache": tmp_path / "hf-cache"}


@pytest.fixture
def admin(db: None) -> User:
    return get_user_model().objects.create_superuser(username="boss", password="a-long-test-password-42")


@pytest.fixture
def member(db: None) -> User:
    return get_user_model().objects.create_user(username="member", password="a-long-test-password-42")


@pytest.fixture
def admin_client(admin: User) -> Client:
    client = Client()
    client.force_login(admin)
    return client


@pytest.fixture
def member_client(member: User) -> Client:
    client = Client()
    client.force_login(member)
    return client


def make_model_dir(path: Path, config: dict[str, Any] | None = None, weights: int = 1000) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(
        json.dumps(config or {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    (path / "model.safetensors").write_bytes(b"\0" * weights)
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Restored after the test: DownloadManager.start() sets it process-wide."""
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", hf_constants.DOWNLOAD_CHUNK_SIZE)
    return 16 * 1024


@pytest.fixture
def manager_factory(small_chunks: int) -> Iterator[Callable[..., Any]]:
    from mlxmanager.downloads.manager import DownloadManager

    made: list[DownloadManager] = []

    def make(**kw: Any) -> DownloadManager:
        kw.setdefault("poll_interval", 0.05)
        kw.setdefault("persist_interval", 0.2)
        kw.setdefault("chunk_size", small_chunks)
        kw.setdefault("metadata_attempts", 1)
        manager = DownloadManager(**kw)
        manager.start()
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.stop(timeout=10)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


@pytest.fixture(autouse=True)
def _no_cached_hub_token() -> Iterator[None]:
    """The stored token is cached per process for a few seconds; tests roll the row back."""
    from mlxmanager.downloads import hub

    hub.forget_stored_token()
    yield
    hub.forget_stored_token()
