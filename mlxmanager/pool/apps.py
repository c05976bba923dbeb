from django.apps import AppConfig


class PoolConfig(AppConfig):
    name = "mlxmanager.pool"
    label = "pool"
    verbose_name = "Model pool"
