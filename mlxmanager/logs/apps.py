from django.apps import AppConfig


class LogsConfig(AppConfig):
    name = "mlxmanager.logs"
    label = "logs"
    verbose_name = "Logs and debug reports"
