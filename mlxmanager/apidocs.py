"""The API reference pages, inside the app's layout and from our own static files (Swagger UI
as django-ninja ships it under /static/ninja/; no CDN): /api/docs for the management API
(session + CSRF) and /docs/v1/ for the gateway members call with an API key."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET
from ninja import NinjaAPI, Swagger

TEMPLATE = "apidocs/swagger.html"
# No online validator badge (an image from validator.swagger.io). No deep links: with them Swagger
# UI puts a link inside each operation's toggle button (a control inside a control: screen readers
# can't reach it, axe's nested-interactive).
SWAGGER_SETTINGS: dict[str, Any] = {
    "layout": "BaseLayout",
    "deepLinking": False,
    "validatorUrl": None,
    "persistAuthorization": False,
}


class AppLayoutSwagger(Swagger):
    """django-ninja's Swagger UI page, rendered inside base.html."""

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        self.settings["url"] = self.get_openapi_url(api, kwargs)
        return render(
            request,
            TEMPLATE,
            {
                "swagger_settings": json.dumps(self.settings),
                "doc_title": "Management API (/api)",
                "which": "api",
                "add_csrf": True,
            },
        )


V1_INTRO = (
    "The OpenAI- and Anthropic-compatible gateway. Send your API key (make one on the API keys "
    "page) as `Authorization: Bearer <key>` (or `x-api-key: <key>`); `model` is a profile's "
    "name, or a name a routing rule sends elsewhere. Use **Authorize** below to try the "
    "endpoints from this page."
)


def v1_schema() -> dict[str, Any]:
    """The gateway's OpenAPI schema, with its API-key schemes (the gateway's auth is a plain
    callable, so ninja does not describe it)."""
    from inference.api.v1 import api as v1_api

    schema = dict(v1_api.get_openapi_schema(path_prefix="/v1/"))
    schema["info"] = {**schema.get("info", {}), "description": V1_INTRO}
    components = dict(schema.get("components") or {})
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "An MLX Manager API key."},
        "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    }
    schema["components"] = components
    schema["security"] = [{"bearer": []}, {"x-api-key": []}]
    return schema


@login_required
@require_GET
def v1_openapi(request: HttpRequest) -> JsonResponse:
    return JsonResponse(v1_schema())


@login_required
@require_GET
def v1_docs(request: HttpRequest) -> HttpResponse:
    settings = {**SWAGGER_SETTINGS, "url": reverse("v1-openapi")}
    return render(
        request,
        TEMPLATE,
        {
            "swagger_settings": json.dumps(settings),
            "doc_title": "Gateway API reference (/v1)",
            "which": "v1",
            "add_csrf": False,
        },
    )
