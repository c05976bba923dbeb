from django.urls import path

from mlxmanager.usage import views

urlpatterns = [
    path("usage/", views.usage_page, name="usage"),
    path("usage/export.csv", views.export_csv, name="usage-export-csv"),
    path("usage/prices/", views.prices, name="usage-prices"),
    path("usage/budgets/", views.budgets_page, name="usage-budgets"),
]
