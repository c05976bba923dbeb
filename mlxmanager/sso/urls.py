from django.urls import path

from mlxmanager.sso import views

urlpatterns = [
    path("login/sso/", views.sso_login, name="sso-login"),
    path("login/sso/callback/", views.sso_callback, name="sso-callback"),
    path("settings/sso/", views.sso_settings, name="sso-settings"),
]
