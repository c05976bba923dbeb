"""The Hugging Face hub, through huggingface_hub, with its errors turned into domain errors.

The endpoint is always passed explicitly (`settings.MLXM_HF_ENDPOINT`), so tests can point
the real client at a local fake hub. The token is the one an admin saved (stored as a JWE,
see `HubToken`), else `HF_TOKEN` from the environment; it is never logged or put in a
message, and `False` is passed when there is none so a token cached in ~/.cache is not
picked up behind the admin's back.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from django.conf import settings
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from mlxmanager.downloads import analysis
from mlxmanager.downloads.errors import HubAccessDenied, HubUnavailable, InsufficientStorage
from mlxmanager.errors import DomainError, NotFound

log = logging.getLogger(__name__)

LIBRARY_NAME = "mlx-manager"
_LIST_FIELDS = [
    "author", "downloads", "likes", "lastModified", "pipeline_tag", "library_name", "tags",
    "gated", "safetensors",
]  # fmt: skip


T = TypeVar("T")
# Hub calls for a page run here under a deadline: huggingface_hub retries a search for up to
# ~25 s with backoff when the hub is down, far too long for someone waiting on a page.
_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hub")


# Calls still running, including those whose caller stopped waiting (huggingface_hub goes on
# retrying them in their thread).
_inflight: set[Future[Any]] = set()


def wait_idle(timeout: float) -> bool:
    """Wait until no hub call is running; False if some still are after `timeout` seconds."""
    _, pending = wait(list(_inflight), timeout=timeout)
    return not pending


# A hub that cannot be reached at all (no DNS, connection refused, a firewall dropping
# packets) is found out by opening one TCP connection, with a short timeout, before each
# call, instead of after huggingface_hub's retries (one handshake: cheap next to the call).


def unreachable_message(detail: str) -> str:
    """The one message every page shows when the hub cannot be reached."""
    return (
        f"Cannot reach the hub at {endpoint()}: {detail}. Check MLXM_HF_ENDPOINT, the proxy "
        "(HTTPS_PROXY) and this machine's network; a gated or private model also needs a "
        "Hugging Face token."
    )


def _connect_address(url: str) -> tuple[str, int, str]:
    """Where a request to `url` first connects: the proxy the environment names for it
    (HTTPS_PROXY, ALL_PROXY, minus NO_PROXY, as httpx reads them), else the host itself."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    default_port = 443 if parts.scheme == "https" else 80
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return p.hostname or "", p.port or (443 if p.scheme == "https" else 80), f"the proxy {p.hostname}"
    return host, parts.port or default_port, host


def check_reachable() -> None:
    """Raise HubUnavailable at once if no connection to the hub (or its proxy) can be opened
    within MLXM_HF_CONNECT_TIMEOUT seconds. A plain TCP connection: no request reaches the hub."""
    url = endpoint()
    connect = float(getattr(settings, "MLXM_HF_CONNECT_TIMEOUT", 3.0))
    host, port, what = _connect_address(url)
    try:
        socket.create_connection((host, port), timeout=connect).close()
    except socket.gaierror as exc:
        raise HubUnavailable(unreachable_message(f"the name {what} could not be resolved")) from exc
    except TimeoutError as exc:
        raise HubUnavailable(unreachable_message(f"no connection to {what} within {connect:g} s")) from exc
    except ConnectionRefusedError as exc:
        raise HubUnavailable(unreachable_message(f"{what} refused the connection")) from exc
    except OSError as exc:
        raise HubUnavailable(unreachable_message(f"no connection to {what} ({exc.strerror or exc})")) from exc


def _network_detail(exc: BaseException) -> str:
    text = _first_line(exc) or type(exc).__name__
    # "[Errno -2] Name or service not known" → something a person can act on.
    if "Name or service not known" in text or "nodename nor servname" in text or "Errno -2" in text:
        return "the host name could not be resolved"
    if "Connection refused" in text or "Errno 111" in text:
        return "the connection was refused"
    return text.rstrip(".")


def _with_deadline(fn: Callable[[], T]) -> T:
    check_reachable()
    timeout = float(getattr(settings, "MLXM_HF_TIMEOUT", 15.0))
    future = _executor.submit(fn)
    _inflight.add(future)
    future.add_done_callback(_inflight.discard)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout as exc:
        raise HubUnavailable(
            f"The hub at {endpoint()} did not answer within {timeout:g} s; try again later. If this "
            "keeps happening, check MLXM_HF_ENDPOINT, the proxy (HTTPS_PROXY) and the network."
        ) from exc


def endpoint() -> str:
    """The Settings page's hub endpoint, else MLXM_HF_ENDPOINT."""
    from mlxmanager.sitesettings.selectors import value

    return str(value("hf_endpoint") or settings.MLXM_HF_ENDPOINT).rstrip("/")


# The stored token is read at most every few seconds per process (the downloader is
# another process: it sees a change within that time).
_TOKEN_TTL = 5.0
_stored: tuple[float, str | None] = (0.0, None)


def forget_stored_token() -> None:
    global _stored
    _stored = (0.0, None)


def stored_token() -> str | None:
    """The token an admin saved (decrypted), or None."""
    global _stored
    at, value = _stored
    if time.monotonic() - at < _TOKEN_TTL:
        return value
    from mlxmanager.credentials import crypto
    from mlxmanager.downloads.models import HubToken

    row = HubToken.objects.filter(pk=1).only("secret_jwe").first()
    value = crypto.decrypt(row.secret_jwe) if row else None
    _stored = (time.monotonic(), value)
    return value


def token_source() -> str | None:
    """'stored', 'environment' or None: where the token in use comes from."""
    if stored_token():
        return "stored"
    return "environment" if getattr(settings, "MLXM_HF_TOKEN", None) else None


def token() -> str | None:
    return stored_token() or getattr(settings, "MLXM_HF_TOKEN", None) or None


def client() -> HfApi:
    return HfApi(endpoint=endpoint(), token=token() or False, library_name=LIBRARY_NAME)


def check_repo_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip().strip("/")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise DomainError(
            f"'{repo_id}' is not a valid model id (expected org/name)", param="repo_id"
        ) from exc
    return repo_id


def hub_error(exc: BaseException, *, repo_id: str, revision: str | None = None) -> DomainError | None:
    """The domain error for a failure talking to the hub; None if `exc` is not one."""
    if isinstance(exc, GatedRepoError):
        extra = (
            "The configured Hugging Face token (HF_TOKEN) has no access to it yet."
            if token()
            else "Save a Hugging Face token (Discover page) or set HF_TOKEN, of an account that has access."
        )
        return HubAccessDenied(
            f"'{repo_id}' is a gated model: accept its terms on its Hugging Face page. {extra}"
        )
    if isinstance(exc, DisabledRepoError):
        return HubAccessDenied(f"'{repo_id}' has been disabled on the hub.")
    if isinstance(exc, RepositoryNotFoundError):
        return NotFound(
            f"Model '{repo_id}' was not found on the hub (a private model also needs a Hugging Face token, HF_TOKEN).",
            param="repo_id",
        )
    if isinstance(exc, RevisionNotFoundError):
        return NotFound(f"Revision '{revision}' of '{repo_id}' was not found on the hub.", param="revision")
    if isinstance(exc, RemoteEntryNotFoundError):
        return NotFound(f"A file of '{repo_id}' was not found on the hub: {_first_line(exc)}")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return HubAccessDenied(
                f"The hub refused access to '{repo_id}' (HTTP {status}): authentication is required or "
                "the Hugging Face token (HF_TOKEN) is invalid."
            )
        if status == 429:
            return HubUnavailable("The hub is rate limiting requests (HTTP 429); try again in a minute.")
        return HubUnavailable(f"The hub answered HTTP {status} for '{repo_id}'; try again later.")
    if is_network_error(exc):
        return HubUnavailable(unreachable_message(_network_detail(exc)))
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return InsufficientStorage("The disk is full: free some space, then resume the download.")
    return None


def is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, OfflineModeIsEnabled, LocalEntryNotFoundError)):
        return True
    # The HTTP client's own errors (httpx2 in huggingface_hub 2.x), without importing it.
    return any(cls.__module__.split(".")[0] in {"httpx", "httpx2", "httpcore"} for cls in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


# --- search ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSummary:
    repo_id: str
    author: str | None
    pipeline_tag: str | None
    library_name: str | None
    tags: list[str]
    downloads: int
    likes: int
    last_modified: datetime | None
    gated: bool
    weights_bytes: int | None
    mlx: bool
    quantization: str | None = None

    @property
    def quantization_label(self) -> str:
        return analysis.QUANT_FILTERS.get(self.quantization or "", "")

    @property
    def kind_label(self) -> str:
        return analysis.pipeline_label(self.pipeline_tag)


def _is_mlx(tags: list[str] | None, library_name: str | None) -> bool:
    return library_name == "mlx" or "mlx" in (tags or [])


def list_models(
    *, search: str | None, mlx_only: bool, pipeline_tag: str | None, sort: str, limit: int
) -> list[ModelSummary]:
    api = client()

    def fetch() -> list[Any]:
        return list(
            api.list_models(
                search=search or None,
                filter=["mlx"] if mlx_only else None,
                pipeline_tag=pipeline_tag or None,
                sort=sort,  # type: ignore[arg-type]
                limit=limit,
                expand=_LIST_FIELDS,  # type: ignore[arg-type]
            )
        )

    try:
        items = _with_deadline(fetch)
    except DomainError:
        raise
    except Exception as exc:
        error = hub_error(exc, repo_id="search")
        if error is None:
            raise
        raise error from exc
    return [
        ModelSummary(
            repo_id=m.id,
            author=m.author or (m.id.split("/")[0] if "/" in m.id else None),
            pipeline_tag=m.pipeline_tag,
            library_name=m.library_name,
            tags=list(m.tags or []),
            downloads=m.downloads or 0,
            likes=m.likes or 0,
            last_modified=m.last_modified,
            gated=bool(m.gated),
            weights_bytes=analysis.bytes_from_parameters(m.safetensors.parameters if m.safetensors else None),
            mlx=_is_mlx(m.tags, m.library_name),
            quantization=analysis.search_quantization(
                m.id, list(m.tags or []), m.safetensors.parameters if m.safetensors else None
            ),
        )
        for m in items
    ]


# --- one model -------------------------------------------------------------------


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int
    sha256: str | None = None


@dataclass
class ModelDetail:
    repo_id: str
    revision: str
    sha: str
    author: str | None
    pipeline_tag: str | None
    library_name: str | None
    tags: list[str]
    downloads: int
    likes: int
    last_modified: datetime | None
    gated: bool
    private: bool
    files: list[HubFile]
    model_type: str | None
    architectures: list[str]
    kind: str
    quantization: analysis.Quantization | None
    dtype: str | None
    context_length: int | None
    template: analysis.TemplateFeatures
    memory_limit_bytes: int
    config_found: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def download_files(self) -> list[HubFile]:
        return [f for f in self.files if analysis.wanted_file(f.name)]

    @property
    def weights_bytes(self) -> int:
        return sum(f.size for f in self.files if analysis.is_weight_file(f.name))

    @property
    def download_bytes(self) -> int:
        return sum(f.size for f in self.download_files)

    @property
    def has_weights(self) -> bool:
        return any(analysis.is_weight_file(f.name) for f in self.files)

    @property
    def mlx(self) -> bool:
        return _is_mlx(self.tags, self.library_name)

    @property
    def fits_memory(self) -> bool:
        return self.has_weights and self.weights_bytes <= self.memory_limit_bytes

    @property
    def memory_percent(self) -> int:
        return round(100 * self.weights_bytes / self.memory_limit_bytes) if self.memory_limit_bytes else 0

    @property
    def kind_label(self) -> str:
        return analysis.TYPE_LABELS[self.kind]

    @property
    def served_at(self) -> str:
        """The /v1 endpoint a profile of this model answers."""
        return analysis.TYPE_ENDPOINTS.get(self.kind, "")

    @property
    def url(self) -> str:
        return f"{endpoint()}/{self.repo_id}"


def _metadata_cache() -> Path:
    return Path(settings.MLXM_DATA_DIR) / "hub-metadata"


def _fetch_text(repo_id: str, filename: str, sha: str) -> str:
    path = hf_hub_download(
        repo_id,
        filename,
        revision=sha,
        endpoint=endpoint(),
        token=token() or False,
        cache_dir=_metadata_cache(),
        library_name=LIBRARY_NAME,
    )
    return Path(path).read_text(encoding="utf-8")


def _fetch_json(repo_id: str, filename: str, sha: str) -> dict[str, Any] | None:
    try:
        data = json.loads(_fetch_text(repo_id, filename, sha))
    except (ValueError, UnicodeDecodeError):
        log.warning("%s in %s is not valid JSON", filename, repo_id)
        return None
    return data if isinstance(data, dict) else None


@dataclass
class _Fetched:
    info: Any
    names: set[str]
    config: dict[str, Any]
    template: str | None


def _fetch_model(repo_id: str, revision: str | None) -> _Fetched:
    info = client().model_info(repo_id, revision=revision or None, files_metadata=True, timeout=10)
    if not info.sha:
        raise HubUnavailable(f"The hub did not say which commit '{repo_id}' is at.")
    names = {s.rfilename for s in info.siblings or []}
    config: dict[str, Any] = {}
    if "config.json" in names:
        config = _fetch_json(repo_id, "config.json", info.sha) or {}
    template = None
    if "chat_template.jinja" in names:
        template = _fetch_text(repo_id, "chat_template.jinja", info.sha)
    elif "tokenizer_config.json" in names:
        template = analysis.chat_template_from(_fetch_json(repo_id, "tokenizer_config.json", info.sha))
    if template is None and "chat_template.json" in names:
        template = analysis.chat_template_from(_fetch_json(repo_id, "chat_template.json", info.sha))
    return _Fetched(info=info, names=names, config=config, template=template)


def model_detail(repo_id: str, *, revision: str | None = None) -> ModelDetail:
    repo_id = check_repo_id(repo_id)
    try:
        fetched = _with_deadline(lambda: _fetch_model(repo_id, revision))
    except DomainError:
        raise
    except Exception as exc:
        error = hub_error(exc, repo_id=repo_id, revision=revision)
        if error is None:
            raise
        raise error from exc
    info, names, config, template = fetched.info, fetched.names, fetched.config, fetched.template
    files = [
        HubFile(name=s.rfilename, size=s.size or 0, sha256=s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
    ]
    notes = [] if "config.json" in names else ["No config.json: the type comes from the hub's tags only."]

    model_type, archs = analysis.architecture(config)
    raw_text_config = config.get("text_config")
    text_config = raw_text_config if isinstance(raw_text_config, dict) else {}
    context = config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
    return ModelDetail(
        repo_id=repo_id,
        revision=revision or "main",
        sha=info.sha,
        author=info.author or (repo_id.split("/")[0] if "/" in repo_id else None),
        pipeline_tag=info.pipeline_tag,
        library_name=info.library_name,
        tags=list(info.tags or []),
        downloads=info.downloads or 0,
        likes=info.likes or 0,
        last_modified=info.last_modified,
        gated=bool(info.gated),
        private=bool(info.private),
        files=sorted(files, key=lambda f: f.name),
        model_type=model_type,
        architectures=archs,
        kind=analysis.detect_type(config, files=names, pipeline_tag=info.pipeline_tag),
        quantization=analysis.quantization(config),
        dtype=analysis.dtype(config),
        context_length=context if isinstance(context, int) else None,
        template=analysis.template_features(template),
        memory_limit_bytes=int(settings.MLXM_MEMORY_LIMIT_BYTES),
        config_found=bool(config),
        notes=notes,
    )
