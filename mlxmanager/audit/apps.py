from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "mlxmanager.audit"
    label = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        # Model-level audit of users, API keys and profiles (apps that don't call log_action).
        from mlxmanager.audit import signals

        signals.connect()
