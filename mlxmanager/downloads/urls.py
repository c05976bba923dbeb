from django.urls import path

from mlxmanager.downloads import views

urlpatterns = [
    path("models/discover/", views.discover, name="discover"),
    path("models/open/", views.model_open, name="model-open"),
    path("models/hub-token/", views.hub_token, name="hub-token"),
    path("models/discover/<path:repo_id>/", views.model_detail, name="model-detail"),
    path("models/local/", views.local_models, name="local-models"),
    path("models/local/<str:model_id>/delete/", views.local_model_delete, name="local-model-delete"),
    path("models/convert/", views.conversion_create, name="conversion-create"),
    path("conversions/<int:conversion_id>/<str:action>/", views.conversion_action, name="conversion-action"),
    path("downloads/", views.downloads, name="downloads"),
    path("downloads/events/", views.download_events, name="download-events"),
    path("downloads/<int:download_id>/<str:action>/", views.download_action, name="download-action"),
]
