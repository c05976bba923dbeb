from django.urls import path

from mlxmanager.audit import views

urlpatterns = [
    path("audit/", views.log_page, name="audit"),
    path("audit/summary/", views.summary, name="audit-summary"),
    path("audit/actions/", views.actions, name="audit-actions"),
    path("audit/export.csv", views.export, {"fmt": "csv"}, name="audit-export-csv"),
    path("audit/export.jsonl", views.export, {"fmt": "jsonl"}, name="audit-export-jsonl"),
]
