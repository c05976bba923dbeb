"""Pages: Discover, a model, Downloads (live over server-sent events), Local models. Admins only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from inference import encoders
from mlxmanager.downloads import analysis, hub, selectors, services
from mlxmanager.downloads.errors import HubUnavailable
from mlxmanager.downloads.models import HubToken
from mlxmanager.errors import DomainError
from mlxmanager.permissions import admin_required, admin_stream

# An event stream ends after this long; EventSource reconnects by itself, and a long-lived
# request never outlives a deploy by much.
SSE_MAX_SECONDS = 300.0
SSE_POLL_SECONDS = 1.0
SSE_KEEPALIVE_SECONDS = 15.0

TYPE_CHOICES = [("", "Any type")] + [(k, analysis.TYPE_LABELS[k]) for k in analysis.PIPELINE_TAGS]
SORT_CHOICES = [("downloads", "Most downloads"), ("recent", "Recently updated"), ("likes", "Most likes"),
                ("trending", "Trending")]  # fmt: skip
LIMIT_CHOICES = [10, 30, 50, 100]


def _htmx(request: HttpRequest) -> bool:
    return bool(getattr(request, "htmx", False))


# --- discover --------------------------------------------------------------------


def _search_filters(request: HttpRequest) -> dict[str, Any]:
    params = request.GET
    # "MLX-ready only" is on by default; a submitted form without the box means off.
    submitted = "sort" in params
    try:
        limit = int(params.get("limit", "30"))
    except ValueError:
        limit = 30
    try:
        max_gb = float(params["max_gb"]) if params.get("max_gb") else None
    except ValueError:
        max_gb = None
    return {
        "q": params.get("q", "").strip(),
        "mlx": params.get("mlx") == "on" if submitted else True,
        "type": params.get("type", ""),
        "sort": params.get("sort", "downloads"),
        "limit": limit if limit in LIMIT_CHOICES else 30,
        "max_gb": max_gb if max_gb is not None and max_gb > 0 else None,
        "quant": params.get("quant", "") if params.get("quant", "") in analysis.QUANT_FILTERS else "",
    }


def _discover_context(request: HttpRequest, *, search: bool = True) -> dict[str, Any]:
    """The page's context; `search=False` for the page itself, which renders at once and asks
    for its results in the background (static/js/discover.js)."""
    filters = _search_filters(request)
    results: list[Any] | None = None
    error = None
    base = {
        "quant_choices": list(analysis.QUANT_FILTERS.items()),
        "filters": filters,
        "type_choices": TYPE_CHOICES,
        "sort_choices": SORT_CHOICES,
        "limit_choices": LIMIT_CHOICES,
        "hub_endpoint": hub.endpoint(),
    }
    if not search:
        return {**base, "results": None, "error": None}
    results = []
    try:
        results = selectors.hub_model_search(
            query=filters["q"],
            mlx_only=filters["mlx"],
            kind=filters["type"] or None,
            sort=filters["sort"],
            limit=filters["limit"],
            max_bytes=int(filters["max_gb"] * 1024**3) if filters["max_gb"] else None,
            quantization=filters["quant"] or None,
        )
    except DomainError as exc:
        error = exc.message
    return {**base, "results": results, "error": error}


@admin_required
@require_GET
def discover(request: HttpRequest) -> HttpResponse:
    """The page renders without waiting for the hub; its script fetches the results partial
    (an htmx request) once per query."""
    if _htmx(request):
        return render(request, "downloads/discover.html#results", _discover_context(request))
    return render(
        request, "downloads/discover.html", {**_discover_context(request, search=False), **_token_context()}
    )


@admin_required
@require_GET
def model_open(request: HttpRequest) -> HttpResponse:
    """ "Add by repo id": straight to the model's page, no search needed."""
    raw = request.GET.get("repo_id", "")
    try:
        repo_id = hub.check_repo_id(raw)
    except DomainError as exc:
        context = {**_discover_context(request, search=False), **_token_context()}
        context.update(open_error=exc.message, open_repo_id=raw)
        return render(request, "downloads/discover.html", context, status=400)
    return redirect("model-detail", repo_id=repo_id)


@admin_required
@require_GET
def model_detail(request: HttpRequest, repo_id: str) -> HttpResponse:
    revision = request.GET.get("revision") or None
    try:
        detail = selectors.hub_model_detail(repo_id=repo_id, revision=revision)
    except DomainError as exc:
        # The page itself works: a hub that can't be reached is a message with a retry
        # (status 200), not an error page; an unknown or gated repo keeps its status.
        status = 200 if isinstance(exc, HubUnavailable) else exc.status
        failed: dict[str, Any] = {
            "repo_id": repo_id,
            "error": exc.message,
            "retryable": isinstance(exc, HubUnavailable),
            "download": selectors.download_for_repo(repo_id=repo_id) if "/" in repo_id else None,
        }
        return render(request, "downloads/model.html", failed, status=status)
    context: dict[str, Any] = {
        "repo_id": detail.repo_id,
        "detail": detail,
        "download": selectors.download_for_repo(repo_id=detail.repo_id),
    }
    return render(request, "downloads/model.html", context)


# --- downloads -------------------------------------------------------------------


def _downloads_context(**extra: Any) -> dict[str, Any]:
    items = selectors.download_list()
    conversions = selectors.conversion_list()
    usage = selectors.profiles_using()
    for d in items:  # a finished download's profiles: "Load" them, or "Create profile"
        d.used_by = usage.get(str(Path(d.local_dir).resolve()), []) if d.local_dir else []  # type: ignore[attr-defined]
    return {
        "downloads": items,
        "conversions": conversions,
        "has_active": any(d.is_active for d in items) or any(c.is_active for c in conversions),
        "service_alive": selectors.download_service_alive(),
        **extra,
    }


@admin_required
@require_http_methods(["GET", "POST"])
def downloads(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _download_create(request)
    template = "downloads/downloads.html#downloads-panel" if _htmx(request) else "downloads/downloads.html"
    return render(request, template, _downloads_context())


def _download_create(request: HttpRequest) -> HttpResponse:
    repo_id = request.POST.get("repo_id", "")
    revision = request.POST.get("revision") or "main"
    try:
        services.download_create(repo_id=repo_id, revision=revision, user=request.user)  # type: ignore[arg-type]
    except DomainError as exc:
        context: dict[str, Any] = {
            "repo_id": repo_id,
            "revision": revision,
            "download": selectors.download_for_repo(repo_id=repo_id) if "/" in repo_id else None,
            "download_error": exc.message,
        }
        try:
            context["detail"] = selectors.hub_model_detail(repo_id=repo_id, revision=revision)
        except DomainError as inner:
            context["error"] = inner.message
        if _htmx(request):
            # htmx swaps 2xx and 400 answers only (base.html): the message must be seen.
            return render(request, "downloads/model.html#download-box", context, status=400)
        return render(request, "downloads/model.html", context, status=exc.status)
    if _htmx(request):
        return HttpResponseClientRedirect(reverse("downloads"))
    return redirect("downloads")


_ACTIONS: dict[str, Callable[..., Any]] = {
    "pause": services.download_pause,
    "resume": services.download_resume,
    "cancel": services.download_cancel,
    "remove": services.download_remove,
}


@admin_required
@require_POST
def download_action(request: HttpRequest, download_id: int, action: str) -> HttpResponse:
    handler = _ACTIONS.get(action)
    if handler is None:
        return HttpResponse("unknown action", status=404)
    error = None
    try:
        handler(download_id=download_id)
    except DomainError as exc:
        error = exc
    if _htmx(request):
        return render(
            request,
            "downloads/downloads.html#downloads-panel",
            _downloads_context(error=error.message if error else None),
            status=400 if error else 200,
        )
    if error is not None:
        return render(
            request, "downloads/downloads.html", _downloads_context(error=error.message), status=error.status
        )
    return redirect("downloads")


@admin_stream
async def download_events(request: HttpRequest) -> StreamingHttpResponse:
    """Server-sent events: the downloads panel, re-rendered whenever a download changes.
    Opened with the session or a stream token (`?token=`, purpose "sse")."""

    def render_panel() -> str:
        return render_to_string(
            "downloads/downloads.html#downloads-panel", _downloads_context(), request=request
        )

    async def stream() -> AsyncIterator[bytes]:
        yield encoders.retry_frame(2000)
        started = last_sent = time.monotonic()
        last: tuple[Any, ...] | None = None
        while time.monotonic() - started < SSE_MAX_SECONDS:
            fingerprint = await sync_to_async(selectors.download_fingerprint)()
            if fingerprint != last:
                last = fingerprint
                last_sent = time.monotonic()
                yield encoders.html_frame("downloads", await sync_to_async(render_panel)())
            elif time.monotonic() - last_sent > SSE_KEEPALIVE_SECONDS:
                last_sent = time.monotonic()
                yield encoders.KEEPALIVE
            await asyncio.sleep(SSE_POLL_SECONDS)

    return encoders.event_stream(stream())


# --- the Hugging Face token ------------------------------------------------------


def _token_context(**extra: Any) -> dict[str, Any]:
    return {"hub_token": HubToken.objects.filter(pk=1).first(), "token_source": hub.token_source(), **extra}


@admin_required
@require_POST
def hub_token(request: HttpRequest) -> HttpResponse:
    """Save (action=set) or remove (action=clear) the stored token; write-only."""
    error = message = None
    try:
        if request.POST.get("action") == "clear":
            removed = services.hub_token_clear(user=request.user)
            message = "Token removed." if removed else "No token was stored."
        else:
            services.hub_token_set(token=request.POST.get("token", ""), user=request.user)
            message = "Token saved (encrypted)."
    except DomainError as exc:
        error = exc.message
    context = _token_context(token_error=error, token_message=message)
    if _htmx(request):
        return render(request, "downloads/discover.html#hub-token", context, status=400 if error else 200)
    if error is not None:
        return render(
            request, "downloads/discover.html", {**_discover_context(request), **context}, status=400
        )
    return redirect("discover")


# --- conversions -------------------------------------------------------------------


@admin_required
@require_POST
def conversion_create(request: HttpRequest) -> HttpResponse:
    """From the Local models page: queue a conversion, then show it on the Downloads page."""
    post = request.POST
    source = (post.get("source_other") or "").strip() or post.get("source", "")
    try:
        try:
            q_bits = int(post["q_bits"]) if post.get("q_bits") else None
            group = int(post.get("q_group_size") or 64)
        except ValueError as exc:
            raise DomainError("the bits and the group size are whole numbers", param="q_bits") from exc
        services.conversion_create(
            source=source, name=post.get("name", ""), q_bits=q_bits, q_group_size=group,
            dtype=post.get("dtype", ""), user=request.user,
        )  # fmt: skip
    except DomainError as exc:
        context = _local_context(convert_error=exc.message, convert_form=post)
        if _htmx(request):
            return render(request, "downloads/local.html#convert-form", context, status=400)
        return render(request, "downloads/local.html", context, status=400)
    if _htmx(request):
        return HttpResponseClientRedirect(reverse("downloads"))
    return redirect("downloads")


_CONVERSION_ACTIONS: dict[str, Callable[..., Any]] = {
    "cancel": services.conversion_cancel,
    "retry": services.conversion_retry,
    "dismiss": services.conversion_dismiss,
}


@admin_required
@require_POST
def conversion_action(request: HttpRequest, conversion_id: int, action: str) -> HttpResponse:
    """Cancel a conversion under way; retry or dismiss a failed (or cancelled) one."""
    handler = _CONVERSION_ACTIONS.get(action)
    if handler is None:
        return HttpResponse("unknown action", status=404)
    error = None
    try:
        handler(conversion_id=conversion_id, user=request.user)
    except DomainError as exc:
        error = exc.message
    context = _downloads_context(error=error)
    if _htmx(request):
        return render(
            request, "downloads/downloads.html#downloads-panel", context, status=400 if error else 200
        )
    if error is not None:
        return render(request, "downloads/downloads.html", context, status=400)
    return redirect("downloads")


# --- local models ----------------------------------------------------------------


def _local_context(**extra: Any) -> dict[str, Any]:
    models = selectors.local_model_list()
    return {
        "models": models,
        "fingerprint": _local_fingerprint(models),
        # Only what mlx_lm.convert takes: text models' transformers checkpoints (not
        # speech, embeddings or vision models, nor a model that is already MLX).
        "convert_sources": [m for m in models if m.convertible],
        "q_bits_choices": services.Q_BITS,
        "q_group_choices": services.Q_GROUP_SIZES,
        "dtype_choices": services.DTYPES,
        **extra,
    }


def _local_fingerprint(models: list[selectors.LocalModel]) -> str:
    import hashlib

    seen = repr([(m.id, m.name, m.size_bytes, m.kind, m.quantization, m.used_by) for m in models])
    return hashlib.sha256(seen.encode()).hexdigest()[:16]


@admin_required
@require_GET
def local_models(request: HttpRequest) -> HttpResponse:
    """The page; with htmx, the panel, or (`?list=<fingerprint>`, the live poll) the list,
    204 while it has not changed."""
    if _htmx(request) and "list" in request.GET:
        context = _local_context()
        if request.GET["list"] == context["fingerprint"]:
            return HttpResponse(status=204)
        return render(request, "downloads/local.html#local-list", context)
    template = "downloads/local.html#local-panel" if _htmx(request) else "downloads/local.html"
    return render(request, template, _local_context())


@admin_required
@require_POST
def local_model_delete(request: HttpRequest, model_id: str) -> HttpResponse:
    error = deleted = None
    try:
        deleted = services.local_model_delete(model_id=model_id)
    except DomainError as exc:
        error = exc
    context = _local_context(error=error.message if error else None, deleted=deleted)
    if _htmx(request):
        return render(request, "downloads/local.html#local-panel", context, status=400 if error else 200)
    if error is not None:
        return render(request, "downloads/local.html", context, status=error.status)
    return redirect("local-models")
