from django.apps import AppConfig


class PlaygroundConfig(AppConfig):
    name = "mlxmanager.playground"
    label = "playground"
    default_auto_field = "django.db.models.BigAutoField"
