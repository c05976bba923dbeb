from django.urls import path

from mlxmanager.pool import views

urlpatterns = [
    path("", views.pool_page, name="pool"),
    path("events/", views.pool_events, name="pool-events"),
    path("<slug:name>/<str:action>/", views.pool_action, name="pool-action"),
]
