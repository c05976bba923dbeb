from django.apps import AppConfig


class SiteSettingsConfig(AppConfig):
    name = "mlxmanager.sitesettings"
    label = "sitesettings"
    verbose_name = "Settings"
