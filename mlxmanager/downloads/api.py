"""Discover, downloads and local models in the management API (admins only)."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from ninja import Query, Router, Schema, Status

from mlxmanager.downloads import hub, selectors, services
from mlxmanager.downloads.models import Download, HubToken
from mlxmanager.permissions import require_admin

router = Router(tags=["models and downloads"])


def _staff(request: HttpRequest) -> None:
    require_admin(request, "search, download and delete models")


class ModelSummaryOut(Schema):
    repo_id: str
    author: str | None
    pipeline_tag: str | None
    library_name: str | None
    tags: list[str]
    downloads: int
    likes: int
    last_modified: datetime | None
    gated: bool
    mlx: bool
    weights_bytes: int | None
    quantization: str | None


class QuantizationOut(Schema):
    bits: int
    group_size: int | None
    mode: str | None
    label: str


class TemplateOut(Schema):
    has_template: bool
    tools: bool
    thinking: bool


class HubFileOut(Schema):
    name: str
    size: int
    sha256: str | None


class ModelDetailOut(Schema):
    repo_id: str
    revision: str
    sha: str
    url: str
    author: str | None
    pipeline_tag: str | None
    library_name: str | None
    tags: list[str]
    downloads: int
    likes: int
    last_modified: datetime | None
    gated: bool
    private: bool
    mlx: bool
    kind: str
    kind_label: str
    model_type: str | None
    architectures: list[str]
    quantization: QuantizationOut | None
    dtype: str | None
    context_length: int | None
    template: TemplateOut
    weights_bytes: int
    download_bytes: int
    memory_limit_bytes: int
    fits_memory: bool
    files: list[HubFileOut]
    download_files: list[HubFileOut]


class SearchQuery(Schema):
    q: str = ""
    mlx: bool = True
    type: str | None = None
    sort: str = "downloads"
    limit: int = 30
    max_gb: float | None = None
    quantization: str | None = None


class DownloadFileOut(Schema):
    name: str
    size: int
    done: int


class DownloadOut(Schema):
    id: int
    repo_id: str
    revision: str
    commit: str
    status: str
    bytes_total: int
    bytes_done: int
    percent: float
    speed: float
    eta_seconds: float | None
    current_file: str
    files: list[DownloadFileOut]
    error: str
    local_dir: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_eta_seconds(obj: Download) -> float | None:
        return obj.eta.total_seconds() if obj.eta is not None else None


class DownloadIn(Schema):
    repo_id: str
    revision: str = "main"


class LocalModelOut(Schema):
    id: str
    name: str
    path: str
    source: str
    size_bytes: int
    modified: datetime
    kind: str
    model_type: str | None
    quantization: str | None
    repo_id: str | None
    commit: str | None
    used_by: list[str]
    deletable: bool


# --- the hub ---------------------------------------------------------------------


@router.get("/hub/models", response=list[ModelSummaryOut])
def search_models(request: HttpRequest, filters: Query[SearchQuery]) -> object:
    """Search the hub. `type`: text, vision, embeddings, tts or stt. `sort`: downloads, recent,
    likes or trending. `max_gb` drops models whose weights are larger. `quantization`: 2bit,
    3bit, 4bit, 5bit, 6bit, 8bit, mxfp4, bf16, fp16 or fp32 (read from names, tags and weight
    dtypes)."""
    _staff(request)
    return selectors.hub_model_search(
        query=filters.q,
        mlx_only=filters.mlx,
        kind=filters.type or None,
        sort=filters.sort,
        limit=filters.limit,
        max_bytes=int(filters.max_gb * 1024**3) if filters.max_gb else None,
        quantization=filters.quantization or None,
    )


@router.get("/hub/models/{path:repo_id}", response=ModelDetailOut)
def model_info(request: HttpRequest, repo_id: str, revision: str | None = None) -> object:
    """Size, quantization, architecture, type, tool/thinking support and memory fit."""
    _staff(request)
    return selectors.hub_model_detail(repo_id=repo_id, revision=revision)


# --- downloads -------------------------------------------------------------------


class HubTokenOut(Schema):
    set: bool
    source: str | None
    hint: str | None
    updated_at: datetime | None


class HubTokenIn(Schema):
    token: str


def _token_state() -> HubTokenOut:
    row = HubToken.objects.filter(pk=1).first()
    return HubTokenOut(
        set=hub.token() is not None,
        source=hub.token_source(),
        hint=row.hint if row else None,
        updated_at=row.updated_at if row else None,
    )


@router.get("/hub/token", response=HubTokenOut)
def hub_token(request: HttpRequest) -> object:
    """Whether a Hugging Face token is in use and where from ("stored" or "environment").
    Write-only: the token itself is never returned, only its last characters when stored."""
    _staff(request)
    return _token_state()


@router.put("/hub/token", response=HubTokenOut)
def hub_token_set(request: HttpRequest, body: HubTokenIn) -> object:
    """Store a Hugging Face token, encrypted at rest; it wins over HF_TOKEN."""
    _staff(request)
    services.hub_token_set(token=body.token, user=request.user)
    return _token_state()


@router.delete("/hub/token", response=HubTokenOut)
def hub_token_clear(request: HttpRequest) -> object:
    """Remove the stored token (HF_TOKEN from the environment applies again)."""
    _staff(request)
    services.hub_token_clear(user=request.user)
    return _token_state()


@router.get("/downloads", response=list[DownloadOut])
def list_downloads(request: HttpRequest) -> object:
    _staff(request)
    return selectors.download_list()


@router.post("/downloads", response={201: DownloadOut})
def create_download(request: HttpRequest, body: DownloadIn) -> object:
    _staff(request)
    download = services.download_create(repo_id=body.repo_id, revision=body.revision, user=request.user)  # type: ignore[arg-type]
    return Status(201, download)


@router.get("/downloads/{download_id}", response=DownloadOut)
def get_download(request: HttpRequest, download_id: int) -> object:
    _staff(request)
    return selectors.download_get(download_id=download_id)


@router.post("/downloads/{download_id}/pause", response=DownloadOut)
def pause_download(request: HttpRequest, download_id: int) -> object:
    _staff(request)
    return services.download_pause(download_id=download_id)


@router.post("/downloads/{download_id}/resume", response=DownloadOut)
def resume_download(request: HttpRequest, download_id: int) -> object:
    _staff(request)
    return services.download_resume(download_id=download_id)


@router.post("/downloads/{download_id}/cancel", response=DownloadOut)
def cancel_download(request: HttpRequest, download_id: int) -> object:
    """Stop and delete the partial files."""
    _staff(request)
    return services.download_cancel(download_id=download_id)


@router.delete("/downloads/{download_id}", response={204: None})
def remove_download(request: HttpRequest, download_id: int) -> object:
    """Forget a completed or cancelled download; the model stays on disk."""
    _staff(request)
    services.download_remove(download_id=download_id)
    return Status(204, None)


# --- local models ----------------------------------------------------------------


@router.get("/local-models", response=list[LocalModelOut])
def list_local_models(request: HttpRequest) -> object:
    """Models on disk, with their size and the profiles that use them."""
    _staff(request)
    return [_local_out(m) for m in selectors.local_model_list()]


@router.delete("/local-models/{model_id}", response={204: None})
def delete_local_model(request: HttpRequest, model_id: str) -> object:
    """Delete a model from disk; refused (409) while a profile uses it."""
    _staff(request)
    services.local_model_delete(model_id=model_id)
    return Status(204, None)


def _local_out(m: selectors.LocalModel) -> dict[str, object]:
    return {**m.__dict__, "path": str(m.path), "deletable": m.deletable}


# --- conversions -------------------------------------------------------------------------


class ConversionIn(Schema):
    source: str
    name: str
    q_bits: int | None = None
    q_group_size: int = 64
    dtype: str = ""


class ConversionOut(Schema):
    id: int
    source: str
    name: str
    output_dir: str
    q_bits: int | None
    q_group_size: int
    dtype: str
    status: str
    stage: str
    percent: int
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@router.get("/conversions", response=list[ConversionOut])
def list_conversions(request: HttpRequest) -> object:
    _staff(request)
    return selectors.conversion_list()


@router.post("/conversions", response={202: ConversionOut})
def create_conversion(request: HttpRequest, body: ConversionIn) -> object:
    """Convert a transformers checkpoint folder (config.json + safetensors) to MLX with
    `mlx_lm.convert`, optionally quantized (`q_bits` 2-8, `q_group_size` 32/64/128; `dtype` for
    the other weights). Runs in the downloader; poll the conversion for progress."""
    _staff(request)
    conversion = services.conversion_create(
        source=body.source,
        name=body.name,
        q_bits=body.q_bits,
        q_group_size=body.q_group_size,
        dtype=body.dtype,
        user=request.user,
    )
    return Status(202, conversion)


@router.get("/conversions/{conversion_id}", response=ConversionOut)
def get_conversion(request: HttpRequest, conversion_id: int) -> object:
    _staff(request)
    return selectors.conversion_get(conversion_id=conversion_id)


@router.post("/conversions/{conversion_id}/cancel", response=ConversionOut)
def cancel_conversion(request: HttpRequest, conversion_id: int) -> object:
    _staff(request)
    return services.conversion_cancel(conversion_id=conversion_id, user=request.user)
