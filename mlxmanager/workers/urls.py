from django.urls import path

from mlxmanager.workers import views

urlpatterns = [
    path("workers/", views.workers, name="workers"),
    path("workers/<int:worker_id>/toggle/", views.worker_toggle, name="worker-toggle"),
    path("workers/<int:worker_id>/delete/", views.worker_delete, name="worker-delete"),
]
