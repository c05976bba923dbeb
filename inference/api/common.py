"""What every /v1 surface shares: its error shape, and the pipeline call of a request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest

from inference import encoders, pipeline
from mlxmanager import request_ids
from mlxmanager.audit import recorder as rec

ANTHROPIC_PATH = "/v1/messages"


def shape_of(request: HttpRequest) -> str:
    """Which API's error shape a request gets: Anthropic's on its paths, OpenAI's elsewhere."""
    path = request.path_info
    anthropic = path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")
    return encoders.ANTHROPIC if anthropic else encoders.OPENAI


# ---- what every surface needs to build its call ------------------------------------------------

_FORWARDED = (("anthropic-version", "HTTP_ANTHROPIC_VERSION"), ("anthropic-beta", "HTTP_ANTHROPIC_BETA"))


def local_prompt(body: Any, build: Callable[[Any], Any]) -> Callable[[], Any]:
    """The neutral prompt of a text request, built only when a local profile serves it: a
    request relayed to a cloud upstream is checked by the upstream, as it always was, and pays
    nothing for the worker's prompt (the proxy path's latency budget)."""

    def make() -> Any:
        body.refuse_unsupported()
        return build(body)

    return make


def call_for(request: HttpRequest, surface: str, model: str, **fields: Any) -> pipeline.Call:
    """The pipeline call of a /v1 request: who asks, its request id, its body for relays (decoded
    only if a cloud upstream is tried)."""
    meta = request.META
    return pipeline.Call(
        surface=surface,
        model=model,
        request_id=request_ids.of(request),
        key=getattr(request, "api_key", None),
        audit=rec.current(),
        body_bytes=request.body if surface in pipeline.ROUTED else None,
        # META, not request.headers: that builds a dict of every header on the hot path.
        client_headers={name: meta[key] for name, key in _FORWARDED if key in meta},
        **fields,
    )
