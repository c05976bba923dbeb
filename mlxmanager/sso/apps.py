from django.apps import AppConfig


class SsoConfig(AppConfig):
    name = "mlxmanager.sso"
    label = "sso"
    verbose_name = "Single sign-on (OIDC)"
