from django.apps import AppConfig


class RulesConfig(AppConfig):
    # Routing rules. Not "routing": mlxmanager/routing.py holds the WebSocket routes.
    name = "mlxmanager.rules"
    label = "rules"
    verbose_name = "Routing rules"
