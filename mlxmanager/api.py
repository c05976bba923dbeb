"""The management JSON API under /api (session auth + CSRF, or an admin token as
`Authorization: Bearer`), errors as RFC 7807."""

from __future__ import annotations

import logging

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import django_auth
from ninja.types import DictStrAny

from mlxmanager.accounts.api import admin_tokens_router, tokens_router, users_router
from mlxmanager.accounts.api import router as keys_router
from mlxmanager.apidocs import SWAGGER_SETTINGS, AppLayoutSwagger
from mlxmanager.audit.api import router as audit_router
from mlxmanager.credentials.api import router as credentials_router
from mlxmanager.downloads.api import router as downloads_router
from mlxmanager.errors import DomainError
from mlxmanager.permissions import AdminTokenAuth, admin_auth
from mlxmanager.playground.api import router as conversations_router
from mlxmanager.pool.api import router as pool_router
from mlxmanager.profiles.api import router as profiles_router
from mlxmanager.rules.api import router as rules_router
from mlxmanager.sitesettings.api import router as settings_router
from mlxmanager.usage.api import router as usage_router
from mlxmanager.validtext import InvalidUnicode, find_invalid_unicode

log = logging.getLogger(__name__)


class _Parser(Parser):
    """JSON bodies as ninja parses them, refused when a string holds invalid Unicode (a lone
    surrogate, which no database column can store): a 400 naming the field, for every body."""

    def parse_body(self, request: HttpRequest) -> DictStrAny:
        data = super().parse_body(request)
        found = find_invalid_unicode(data)
        if found is not None:
            raise InvalidUnicode(*found)  # ninja re-raises it as HttpError(400) "from" this
        return data


# /api/docs: Swagger UI from our own static files, inside the app's layout (mlxmanager/apidocs.py).
api = NinjaAPI(
    title="MLX Manager API",
    version="1",
    urls_namespace="api",
    auth=[AdminTokenAuth(), django_auth],
    parser=_Parser(),
    docs=AppLayoutSwagger(settings=SWAGGER_SETTINGS),
)


def problem(request: HttpRequest, status: int, title: str, detail: str, **extra: object) -> HttpResponse:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
        **extra,
    }
    return JsonResponse(body, status=status, content_type="application/problem+json")


@api.exception_handler(DomainError)
def _domain(request: HttpRequest, exc: DomainError) -> HttpResponse:
    return problem(request, exc.status, exc.code.replace("_", " ").capitalize(), exc.message, param=exc.param)


@api.exception_handler(ValidationError)
def _validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return problem(
        request, 400, "Invalid request", "The request body or parameters are invalid.", errors=exc.errors
    )


@api.exception_handler(HttpError)
def _http(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, InvalidUnicode):  # from _Parser: shaped like a ValidationError
        bad = exc.__cause__
        return problem(
            request,
            400,
            "Invalid request",
            f"Invalid value for '{bad.param}': {bad.message}" if bad.param else bad.message,
            param=bad.param,
            errors=[{"type": "invalid_unicode", "loc": ["body", *bad.loc], "msg": bad.message}],
        )
    return problem(request, exc.status_code, "Bad request" if exc.status_code == 400 else "Error", str(exc))


@api.exception_handler(AuthenticationError)
def _auth(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return problem(request, 401, "Unauthorized", "Log in first.")


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return problem(request, 413, "Payload too large", "The request body is too large.")


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.exception("unhandled error on %s", request.path)
    return problem(request, 500, "Internal error", "The server had an error while processing your request.")


# Members reach their own keys and conversations, stream tokens, and the profile list; the
# admin areas check the role before anything else (see AdminSessionAuth).
api.add_router("/keys", keys_router)
api.add_router("/users", users_router, auth=admin_auth("manage users"))
api.add_router("/tokens", tokens_router)
api.add_router("/admin-tokens", admin_tokens_router, auth=admin_auth("manage admin tokens"))
api.add_router("/audit", audit_router, auth=admin_auth("read the audit log"))
api.add_router("/credentials", credentials_router, auth=admin_auth("manage credentials"))
api.add_router("/rules", rules_router, auth=admin_auth("manage routing rules"))
api.add_router("/settings", settings_router, auth=admin_auth("change settings"))
api.add_router("/profiles", profiles_router)
api.add_router("/pool", pool_router, auth=admin_auth("see and change the pool"))
api.add_router("/conversations", conversations_router)
api.add_router("/", usage_router)  # /usage, /prices, /budgets: members read their own
api.add_router("/", downloads_router, auth=admin_auth("search, download and delete models"))
