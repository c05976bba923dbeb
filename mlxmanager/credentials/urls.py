from django.urls import path

from mlxmanager.credentials import views

urlpatterns = [
    path("credentials/", views.credentials, name="credentials"),
    path("credentials/<int:credential_id>/test/", views.credential_test, name="credential-test"),
    path("credentials/<int:credential_id>/secret/", views.credential_secret, name="credential-secret"),
    path("credentials/<int:credential_id>/toggle/", views.credential_toggle, name="credential-toggle"),
    path("credentials/<int:credential_id>/delete/", views.credential_delete, name="credential-delete"),
]
