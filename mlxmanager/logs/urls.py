from django.urls import path

from mlxmanager.logs import views

urlpatterns = [
    path("logs/", views.logs_page, name="logs"),
    path("logs/events/", views.logs_events, name="logs-events"),
    path("logs/debug-report/", views.debug_report, name="debug-report"),
]
