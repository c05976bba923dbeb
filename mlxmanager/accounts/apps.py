from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "mlxmanager.accounts"
    label = "accounts"
