"""Reads: hub search with filters, model detail caching, the download service heartbeat,
and the local models list."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from huggingface_hub import hf_hub_download

from mlxmanager.downloads import selectors, storage
from mlxmanager.downloads.models import Download
from mlxmanager.errors import DomainError, NotFound
from mlxmanager.profiles.models import Profile
from tests.mlxmanager.downloads.conftest import (
    BIG,
    EMBED,
    GATED,
    KOKORO,
    QWEN,
    VISION,
    WHISPER,
    make_model_dir,
)

pytestmark = pytest.mark.django_db


# --- hub search --------------------------------------------------------------------


def ids(results) -> list[str]:
    return [m.repo_id for m in results]


def test_default_search_lists_mlx_models_by_downloads() -> None:
    assert ids(selectors.hub_model_search()) == [QWEN, VISION, EMBED, WHISPER, KOKORO, BIG]


def test_search_including_models_that_are_not_mlx_ready() -> None:
    results = ids(selectors.hub_model_search(mlx_only=False))
    assert results[0] == GATED and "acme/pytorch-only" in results


def test_search_text() -> None:
    assert ids(selectors.hub_model_search(query="  qwen ")) == [QWEN, VISION]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("text", [QWEN, BIG]),
        ("vision", [VISION]),
        ("embeddings", [EMBED]),
        ("tts", [KOKORO]),
        ("stt", [WHISPER]),
    ],
)
def test_search_by_type(kind: str, expected: list[str]) -> None:
    assert ids(selectors.hub_model_search(kind=kind)) == expected


def test_search_sorted_by_recency(fakehub) -> None:
    from datetime import UTC, datetime

    fakehub.repos[KOKORO].last_modified = datetime(2026, 5, 1, tzinfo=UTC)
    assert ids(selectors.hub_model_search(sort="recent"))[0] == KOKORO
    assert fakehub.requests[-1].path == "/api/models"


def test_search_limit() -> None:
    assert len(selectors.hub_model_search(limit=2)) == 2


def test_search_max_size_keeps_models_of_unknown_size() -> None:
    results = ids(selectors.hub_model_search(max_bytes=500_000))
    assert VISION not in results  # 9 MB of weights
    assert QWEN in results  # 320 kB
    assert EMBED in results  # size not reported by the hub: kept


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"sort": "alphabetical"}, "sort"),
        ({"kind": "video"}, "type"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
    ],
)
def test_search_refuses_bad_filters(kwargs: dict, param: str) -> None:
    with pytest.raises(DomainError) as exc:
        selectors.hub_model_search(**kwargs)
    assert exc.value.param == param


def test_search_results_are_cached_briefly(fakehub) -> None:
    selectors.hub_model_search(query="qwen")
    selectors.hub_model_search(query="qwen")
    assert len([r for r in fakehub.requests if r.path == "/api/models"]) == 1
    selectors.hub_model_search(query="gemma")
    assert len([r for r in fakehub.requests if r.path == "/api/models"]) == 2


def test_model_detail_is_cached_but_the_memory_limit_is_not(fakehub, settings) -> None:
    assert selectors.hub_model_detail(repo_id=QWEN).fits_memory
    settings.MLXM_MEMORY_LIMIT_BYTES = 1000
    again = selectors.hub_model_detail(repo_id=QWEN)
    assert not again.fits_memory
    assert len([r for r in fakehub.requests if r.path == f"/api/models/{QWEN}"]) == 1


# --- downloads ---------------------------------------------------------------------


def test_download_get_unknown() -> None:
    with pytest.raises(NotFound):
        selectors.download_get(download_id=12345)


def test_download_service_alive_reads_the_heartbeat() -> None:
    assert not selectors.download_service_alive()
    selectors.heartbeat_path().touch()
    assert selectors.download_service_alive()
    assert not selectors.download_service_alive(now=time.time() + 60)


def test_fingerprint_changes_with_progress() -> None:
    first = selectors.download_fingerprint()
    d = Download.objects.create(repo_id=QWEN, local_dir="/x/a")
    second = selectors.download_fingerprint()
    assert second != first
    from django.utils import timezone

    Download.objects.filter(pk=d.pk).update(bytes_done=5, updated_at=timezone.now())
    assert selectors.download_fingerprint() != second


# --- local models --------------------------------------------------------------------


def test_local_models_in_the_models_dir(hub_settings) -> None:
    models = hub_settings["models"]
    make_model_dir(
        models / "org--text",
        {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "quantization": {"bits": 4, "group_size": 64},
        },
        weights=2048,
    )
    make_model_dir(models / "org--embed", {"model_type": "bert", "architectures": ["BertModel"]})
    (models / "not-a-model").mkdir()
    (models / "not-a-model" / "notes.txt").write_text("x")
    make_model_dir(models / ".building-tmp")  # hidden: a build in progress
    partial = make_model_dir(models / "org--downloading")
    (partial / storage.PARTIAL_DIR).mkdir()  # a download in progress

    found = {m.name: m for m in selectors.local_model_list()}
    assert set(found) == {"org--text", "org--embed"}
    text = found["org--text"]
    assert text.kind == "text" and text.quantization == "4-bit, group size 64" and text.model_type == "llama"
    assert text.size_bytes == (models / "org--text" / "config.json").stat().st_size + 2048
    assert text.source == "models" and text.deletable and text.used_by == []
    assert found["org--embed"].kind == "embeddings"
    assert text.id == selectors.local_model_id(models / "org--text")


def test_local_models_show_the_repo_of_a_completed_download(hub_settings) -> None:
    path = make_model_dir(hub_settings["models"] / "mlx-community--Qwen3-0.6B-4bit")
    Download.objects.create(repo_id=QWEN, local_dir=str(path), status=Download.Status.COMPLETED)
    (m,) = selectors.local_model_list()
    assert m.repo_id == QWEN


def test_local_models_list_profiles_that_use_them(hub_settings) -> None:
    a = make_model_dir(hub_settings["models"] / "a")
    b = make_model_dir(hub_settings["models"] / "b")
    Profile.objects.create(name="chat", model_path=str(a))
    Profile.objects.create(name="chat-cold", model_path=str(a) + "/")
    Profile.objects.create(name="fast", model_path="/elsewhere", draft_model_path=str(b))
    found = {m.name: m.used_by for m in selectors.local_model_list()}
    assert found == {"a": ["chat", "chat-cold"], "b": ["fast"]}


def test_local_models_from_the_hugging_face_cache(fakehub, hub_settings) -> None:
    cache = hub_settings["hf_cache"]
    for name in ("config.json", "model.safetensors"):
        hf_hub_download(QWEN, name, endpoint=fakehub.url, cache_dir=cache, token=False)
    hf_hub_download(EMBED, "config.json", endpoint=fakehub.url, cache_dir=cache, token=False)  # no weights

    (m,) = selectors.local_model_list()
    assert m.source == "hf-cache" and m.name == QWEN and m.repo_id == QWEN
    assert m.commit == fakehub.repos[QWEN].sha
    assert m.path == cache / "models--mlx-community--Qwen3-0.6B-4bit" / "snapshots" / m.commit
    assert m.kind == "text" and m.size_bytes >= 300_000 and m.deletable


def test_local_models_in_configured_folders(settings, tmp_path: Path) -> None:
    extra = tmp_path / "my-models"
    make_model_dir(extra / "custom")
    settings.MLXM_MODEL_DIRS = [extra, settings.MLXM_MODELS_DIR]
    (m,) = selectors.local_model_list()
    assert m.source == "folder" and not m.deletable


def test_local_model_list_without_any_folders(settings, tmp_path: Path) -> None:
    settings.MLXM_MODELS_DIR = tmp_path / "missing"
    settings.MLXM_HF_CACHE_DIR = tmp_path / "missing-too"
    assert selectors.local_model_list() == []


def test_local_model_list_queries_do_not_grow_with_models(hub_settings) -> None:
    for i in range(3):
        make_model_dir(hub_settings["models"] / f"m{i}")
    with CaptureQueriesContext(connection) as few:
        selectors.local_model_list()
    for i in range(3, 12):
        make_model_dir(hub_settings["models"] / f"m{i}")
    with CaptureQueriesContext(connection) as many:
        assert len(selectors.local_model_list()) == 12
    assert len(many.captured_queries) == len(few.captured_queries) <= 2


def test_local_model_get_unknown() -> None:
    with pytest.raises(NotFound):
        selectors.local_model_get(model_id="nope")


def test_dir_size_ignores_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    os.symlink(tmp_path / "a", tmp_path / "link")
    assert storage.dir_size(tmp_path) == 10


@pytest.mark.parametrize(
    ("quant", "expected"),
    [
        ("4bit", [QWEN, VISION, BIG]),  # from the names
        ("bf16", [EMBED, KOKORO]),
        ("8bit", []),
    ],
)
def test_search_by_quantization(quant: str, expected: list[str]) -> None:
    assert ids(selectors.hub_model_search(quantization=quant)) == expected


def test_search_quantization_is_reported_and_refused_when_unknown() -> None:
    by_id = {m.repo_id: m.quantization for m in selectors.hub_model_search()}
    assert by_id[QWEN] == "4bit"
    assert by_id[WHISPER] is None  # nothing in its name, tags or dtypes says
    with pytest.raises(DomainError) as exc:
        selectors.hub_model_search(quantization="7bit")
    assert exc.value.param == "quantization"
