"""The `/v1` gateway API: its NinjaAPI, API-key auth, and the one place that maps errors to
each API's shape (Anthropic's on `/v1/messages…`, OpenAI's everywhere else).

Surface modules (openai, anthropic, responses, audio) hang their routers off `api` and stay
thin: parse the schema into a `pipeline.Call`, serve it, encode the answer.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from inference import encoders, upstream
from inference.api import anthropic, audio, openai, responses
from inference.api.common import shape_of
from inference.client import EngineDeadError, EngineRequestError
from inference.events import Failure, failure_of, unexpected
from mlxmanager import request_ids
from mlxmanager.accounts import keycache, limits
from mlxmanager.audit import recorder as rec
from mlxmanager.errors import DomainError

log = logging.getLogger(__name__)


class ApiKeyAuth:
    """`Authorization: Bearer <key>` or `x-api-key: <key>`."""

    async def __call__(self, request: HttpRequest) -> Any:
        # META, not request.headers: that builds a dict of every header (hot path).
        header = request.META.get("HTTP_AUTHORIZATION", "")
        secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
        secret = secret or request.META.get("HTTP_X_API_KEY", "").strip()
        key = await keycache.authenticate(secret)  # cached briefly: no query per request
        if key is not None:
            request.api_key = key  # type: ignore[attr-defined]
            await limits.check_request(key)  # 429 with Retry-After past a limit
        return key


api = NinjaAPI(
    title="MLX Manager gateway (OpenAI- and Anthropic-compatible)",
    urls_namespace="v1",
    docs_url=None,
    auth=ApiKeyAuth(),
)
api.add_router("", openai.router)
api.add_router("", anthropic.router)
api.add_router("", responses.router)
api.add_router("", audio.router)


def respond(request: HttpRequest, f: Failure) -> HttpResponse:
    audit = rec.current()
    if audit is not None and f.status == 429:
        audit.error_type = f.code or "rate_limited"
    return encoders.error_response(shape_of(request), f, request_ids.of(request))


def _pydantic_message(err: dict[str, Any]) -> tuple[str, str | None]:
    loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "payload")]
    param = ".".join(loc) or None
    if err.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if err.get("type") == "missing" and loc:
        return f"Missing required parameter: '{param}'", param
    if err.get("type") == "json_invalid" or not loc:
        return f"We could not parse the JSON body of your request: {err.get('msg')}", None
    return f"Invalid value for '{param}': {err.get('msg')}", param


def _invalid(
    message: str, param: str | None = None, *, status: int = 400, code: str | None = None
) -> Failure:
    return Failure(status, message, code, "invalid_request_error", param)


@api.exception_handler(ValidationError)
def _validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    message, param = _pydantic_message((exc.errors or [{"msg": "invalid request"}])[0])
    return respond(request, _invalid(message, param))


@api.exception_handler(HttpError)
def _http(request: HttpRequest, exc: HttpError) -> HttpResponse:
    message = str(exc)
    if message.startswith("Cannot parse request body"):
        message = "We could not parse the JSON body of your request."
    return respond(request, _invalid(message, status=exc.status_code))


@api.exception_handler(AuthenticationError)
def _auth(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    message = "Missing or invalid API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key'."
    return respond(request, _invalid(message, status=401, code="invalid_api_key"))


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return respond(request, _invalid("The request body is too large.", status=413, code="request_too_large"))


@api.exception_handler(upstream.UpstreamRejected)
def _rejected(request: HttpRequest, exc: upstream.UpstreamRejected) -> HttpResponse:
    """The upstream refused the request: same protocol → its body as is; otherwise re-shaped."""
    if shape_of(request) == exc.protocol and exc.body:
        return HttpResponse(exc.body, status=exc.status, content_type="application/json")
    type_ = "invalid_request_error" if exc.status < 500 else "server_error"
    return respond(request, Failure(exc.status, f"upstream: {exc.message}", "upstream_error", type_))


@api.exception_handler(DomainError)
@api.exception_handler(EngineDeadError)
@api.exception_handler(EngineRequestError)
def _known(request: HttpRequest, exc: Exception) -> HttpResponse:
    return respond(request, failure_of(exc) or unexpected())


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.exception("unhandled error on %s", request.path)
    return respond(request, unexpected())


@csrf_exempt  # API-key clients send no CSRF token: a POST must get the JSON 404 too
async def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Unknown /v1 paths answer in their surface's error shape, not with an HTML page."""
    message = f"Unknown endpoint: {request.method} {request.path}"
    return respond(request, _invalid(message, status=404, code="unknown_url"))
