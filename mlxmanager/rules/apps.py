from django.apps import AppConfig


class RulesConfig(AppConfig):
    # Routing rules (the WebSocket URL routes are mlxmanager/ws_urls.py).
    name = "mlxmanager.rules"
    label = "rules"
    verbose_name = "Routing rules"
