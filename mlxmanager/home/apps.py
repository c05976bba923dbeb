from django.apps import AppConfig


class HomeConfig(AppConfig):
    name = "mlxmanager.home"
    label = "home"
    verbose_name = "Home dashboard"
