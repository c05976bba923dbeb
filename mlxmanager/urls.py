from django.urls import include, path

from inference.api.openai import api as v1_api
from inference.views import healthz
from mlxmanager.api import api

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("v1/", v1_api.urls),
    path("api/", api.urls),
    path("", include("mlxmanager.accounts.urls")),
]
