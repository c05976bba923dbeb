from django.apps import AppConfig


class DownloadsConfig(AppConfig):
    name = "mlxmanager.downloads"
    label = "downloads"
    verbose_name = "Discover and downloads"
