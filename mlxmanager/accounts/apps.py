from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "mlxmanager.accounts"
    label = "accounts"

    def ready(self) -> None:
        from mlxmanager.accounts import signals  # noqa: F401  (receivers)
