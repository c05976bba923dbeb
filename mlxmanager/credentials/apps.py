from django.apps import AppConfig


class CredentialsConfig(AppConfig):
    name = "mlxmanager.credentials"
    label = "credentials"
    verbose_name = "Cloud credentials"
