from django.urls import path

from mlxmanager.sitesettings import views

urlpatterns = [
    path("settings/", views.settings_page, name="settings"),
    path("connect/", views.connect, name="connect"),
]
