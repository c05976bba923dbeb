from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "mlxmanager.usage"
    label = "usage"
    verbose_name = "Usage, spend and budgets"
