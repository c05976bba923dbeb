from django.db import migrations


def rebuild(apps, schema_editor):  # type: ignore[no-untyped-def]
    # The usage rollup of the request rows already in the audit log.
    from mlxmanager.usage.services import usage_rebuild

    usage_rebuild()


class Migration(migrations.Migration):
    dependencies = [("usage", "0001_usage_rollup_prices_budgets"), ("audit", "0003_request_id")]

    operations = [migrations.RunPython(rebuild, migrations.RunPython.noop)]
