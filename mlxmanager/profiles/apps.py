from django.apps import AppConfig


class ProfilesConfig(AppConfig):
    name = "mlxmanager.profiles"
    label = "profiles"
