from django.urls import include, path, re_path

from inference.api.v1 import api as v1_api
from inference.api.v1 import not_found as v1_not_found
from inference.views import healthz, metrics_view
from mlxmanager import apidocs
from mlxmanager.api import api

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("v1/", v1_api.urls),
    re_path(r"^v1/(?P<path>.*)$", v1_not_found),
    path("api/", api.urls),
    path("docs/v1/", apidocs.v1_docs, name="v1-docs"),
    path("docs/v1/openapi.json", apidocs.v1_openapi, name="v1-openapi"),
    path("profiles/", include("mlxmanager.profiles.urls")),
    path("pool/", include("mlxmanager.pool.urls")),
    path("playground/", include("mlxmanager.playground.urls")),
    path("", include("mlxmanager.home.urls")),
    path("", include("mlxmanager.downloads.urls")),
    path("", include("mlxmanager.accounts.urls")),
    path("", include("mlxmanager.audit.urls")),
    path("", include("mlxmanager.credentials.urls")),
    path("", include("mlxmanager.sso.urls")),
    path("", include("mlxmanager.rules.urls")),
    path("", include("mlxmanager.workers.urls")),
    path("", include("mlxmanager.logs.urls")),
    path("", include("mlxmanager.usage.urls")),
    path("", include("mlxmanager.sitesettings.urls")),
]
