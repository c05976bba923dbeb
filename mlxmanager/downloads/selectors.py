"""Reads: the hub (search, one model), downloads, and the models already on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Max

from mlxmanager.downloads import analysis, hub, storage
from mlxmanager.downloads.models import Conversion, Download
from mlxmanager.errors import DomainError, NotFound
from mlxmanager.profiles.models import Profile

log = logging.getLogger(__name__)

SORTS = {
    "downloads": "downloads",
    "recent": "last_modified",
    "likes": "likes",
    "trending": "trending_score",
}
MAX_LIMIT = 100
# Hub answers are cached briefly: the search form re-renders on every keystroke pause.
_CACHE_SECONDS = 120
# The downloader touches this file; older than this means it is not running.
HEARTBEAT_FILE = "downloads.heartbeat"
HEARTBEAT_STALE_SECONDS = 10.0


def _cache_key(*parts: object) -> str:
    raw = json.dumps([hub.endpoint(), bool(hub.token()), *parts], default=str)
    return "mlxm:hub:" + hashlib.sha256(raw.encode()).hexdigest()


# --- the hub ---------------------------------------------------------------------


def hub_model_search(
    *,
    query: str = "",
    mlx_only: bool = True,
    kind: str | None = None,
    sort: str = "downloads",
    limit: int = 30,
    max_bytes: int | None = None,
    quantization: str | None = None,
) -> list[hub.ModelSummary]:
    """Search the hub. `kind` is one of analysis.PIPELINE_TAGS; `max_bytes` drops larger models.

    The size filter runs on the returned page (the hub cannot filter by bytes); models
    whose size the hub does not report are kept. `quantization` (an analysis.QUANT_FILTERS
    key) keeps only models known to have it, from their name, tags or weight dtypes.
    """
    if sort not in SORTS:
        raise DomainError(f"sort must be one of {', '.join(SORTS)}", param="sort")
    if kind and kind not in analysis.PIPELINE_TAGS:
        raise DomainError(f"type must be one of {', '.join(analysis.PIPELINE_TAGS)}", param="type")
    if not 1 <= limit <= MAX_LIMIT:
        raise DomainError(f"limit must be between 1 and {MAX_LIMIT}", param="limit")
    if quantization and quantization not in analysis.QUANT_FILTERS:
        choices = ", ".join(analysis.QUANT_FILTERS)
        raise DomainError(f"quantization must be one of {choices}", param="quantization")
    query = query.strip()[:200]
    key = _cache_key("search", query, mlx_only, kind, sort, limit)
    results: list[hub.ModelSummary] | None = cache.get(key)
    if results is None:
        results = hub.list_models(
            search=query,
            mlx_only=mlx_only,
            pipeline_tag=analysis.PIPELINE_TAGS[kind] if kind else None,
            sort=SORTS[sort],
            limit=limit,
        )
        cache.set(key, results, _CACHE_SECONDS)
    if max_bytes is not None:
        results = [m for m in results if m.weights_bytes is None or m.weights_bytes <= max_bytes]
    if quantization:
        results = [m for m in results if m.quantization == quantization]
    return results


def hub_model_detail(*, repo_id: str, revision: str | None = None) -> hub.ModelDetail:
    repo_id = hub.check_repo_id(repo_id)
    key = _cache_key("detail", repo_id, revision)
    detail: hub.ModelDetail | None = cache.get(key)
    if detail is None:
        detail = hub.model_detail(repo_id, revision=revision)
        cache.set(key, detail, _CACHE_SECONDS)
    # The limit is a setting, not a hub fact: never serve a stale one from the cache.
    detail.memory_limit_bytes = int(settings.MLXM_MEMORY_LIMIT_BYTES)
    return detail


# --- downloads -------------------------------------------------------------------


def download_list() -> list[Download]:
    return list(Download.objects.order_by("-created_at", "-id"))


def download_get(*, download_id: int) -> Download:
    try:
        return Download.objects.get(pk=download_id)
    except Download.DoesNotExist as exc:
        raise NotFound("no such download") from exc


def download_for_repo(*, repo_id: str) -> Download | None:
    return Download.objects.filter(local_dir=str(storage.local_dir_for(repo_id))).first()


def download_fingerprint() -> tuple[int, str, int, str, bool]:
    """Changes whenever the downloads panel (downloads and conversions) would render differently."""
    agg = Download.objects.aggregate(n=Count("id"), last=Max("updated_at"))
    conv = Conversion.objects.aggregate(n=Count("id"), last=Max("updated_at"))
    return agg["n"], str(agg["last"]), conv["n"], str(conv["last"]), download_service_alive()


def conversion_list() -> list[Conversion]:
    return list(Conversion.objects.order_by("-created_at", "-id"))


def conversion_get(*, conversion_id: int) -> Conversion:
    conversion = Conversion.objects.filter(pk=conversion_id).first()
    if conversion is None:
        raise NotFound("no such conversion")
    return conversion


def heartbeat_path() -> Path:
    return Path(settings.MLXM_DATA_DIR) / HEARTBEAT_FILE


def download_service_alive(*, now: float | None = None) -> bool:
    try:
        mtime = heartbeat_path().stat().st_mtime
    except OSError:
        return False
    return (now if now is not None else time.time()) - mtime < HEARTBEAT_STALE_SECONDS


# --- local models ----------------------------------------------------------------

SOURCE_MODELS = "models"
SOURCE_HF_CACHE = "hf-cache"
SOURCE_FOLDER = "folder"
SOURCE_LABELS = {
    SOURCE_MODELS: "Downloads",
    SOURCE_HF_CACHE: "Hugging Face cache",
    SOURCE_FOLDER: "Model folder",
}


@dataclass
class LocalModel:
    id: str
    name: str
    path: Path
    source: str
    size_bytes: int
    modified: datetime
    kind: str
    model_type: str | None
    quantization: str | None
    repo_id: str | None = None
    commit: str | None = None
    used_by: list[str] = field(default_factory=list)
    quantization_config: bool = False

    @property
    def kind_label(self) -> str:
        return analysis.TYPE_LABELS.get(self.kind, self.kind)

    @property
    def source_label(self) -> str:
        return SOURCE_LABELS[self.source]

    @property
    def deletable(self) -> bool:
        return self.source in (SOURCE_MODELS, SOURCE_HF_CACHE)

    @property
    def convertible(self) -> bool:
        """Whether mlx_lm.convert takes it: a text model's transformers checkpoint, not one
        that is already MLX (quantized, or published by mlx-community) nor a speech,
        embeddings or vision model (mlx-lm converts language models only)."""
        if self.kind != analysis.TEXT or self.quantization_config:
            return False
        return not (self.repo_id or "").lower().startswith("mlx-community/")


def local_model_id(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


def _is_model_dir(path: Path) -> bool:
    if not (path / "config.json").is_file() or (path / storage.PARTIAL_DIR).exists():
        return False
    return any(path.glob("*.safetensors"))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(path: Path, *, source: str, size: int, **extra: Any) -> LocalModel:
    config = _read_config(path)
    files = [p.relative_to(path).as_posix() for p in path.rglob("*.json")] if path.is_dir() else []
    model_type, _archs = analysis.architecture(config)
    quant = analysis.quantization(config)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    return LocalModel(
        id=local_model_id(path),
        name=extra.pop("name", path.name),
        path=path,
        source=source,
        size_bytes=size,
        modified=datetime.fromtimestamp(mtime, tz=UTC),
        kind=analysis.detect_type(config, files=files),
        model_type=model_type,
        quantization=quant.label if quant else analysis.dtype(config),
        quantization_config=quant is not None,
        **extra,
    )


def _scan_folder(root: Path, source: str) -> list[LocalModel]:
    found = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    for child in children:
        if _is_model_dir(child):
            found.append(_describe(child, source=source, size=storage.dir_size(child)))
    return found


def _scan_hf_cache(cache_dir: Path) -> list[LocalModel]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    except OSError as exc:
        log.warning("cannot scan the Hugging Face cache at %s: %s", cache_dir, exc)
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            names = {f.file_name for f in rev.files}
            if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
                continue
            found.append(
                _describe(
                    rev.snapshot_path,
                    source=SOURCE_HF_CACHE,
                    size=rev.size_on_disk,
                    name=repo.repo_id,
                    repo_id=repo.repo_id,
                    commit=rev.commit_hash,
                )
            )
    return found


def _profile_usage() -> dict[Path, list[str]]:
    usage: dict[Path, list[str]] = defaultdict(list)
    for name, model_path, draft_path in Profile.objects.values_list("name", "model_path", "draft_model_path"):
        for p in (model_path, draft_path):
            if p:
                usage[Path(p).expanduser().resolve()].append(name)
    return usage


def profiles_using() -> dict[str, list[str]]:
    """The profiles using each model folder (its resolved path, as a string)."""
    return {str(path): sorted(names) for path, names in _profile_usage().items()}


def local_model_list() -> list[LocalModel]:
    """Models on disk: our downloads, the Hugging Face cache, and MLXM_MODEL_DIRS folders."""
    models = _scan_folder(storage.models_dir(), SOURCE_MODELS)
    by_dir = dict(
        Download.objects.filter(status=Download.Status.COMPLETED).values_list("local_dir", "repo_id")
    )
    for m in models:
        m.repo_id = by_dir.get(str(m.path))
        m.name = m.repo_id or m.name
    cache_dir = getattr(settings, "MLXM_HF_CACHE_DIR", None)
    if cache_dir:
        models += _scan_hf_cache(Path(cache_dir))
    for folder in getattr(settings, "MLXM_MODEL_DIRS", []):
        models += _scan_folder(Path(folder), SOURCE_FOLDER)
    usage = _profile_usage()
    seen: set[str] = set()
    unique = []
    for m in models:
        if m.id in seen:  # a folder listed twice (e.g. MLXM_MODEL_DIRS includes the models dir)
            continue
        seen.add(m.id)
        m.used_by = sorted(usage.get(m.path.resolve(), []))
        unique.append(m)
    return unique


def local_model_get(*, model_id: str) -> LocalModel:
    for m in local_model_list():
        if m.id == model_id:
            return m
    raise NotFound("no such local model")
