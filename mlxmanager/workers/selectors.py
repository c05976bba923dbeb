from __future__ import annotations

from mlxmanager.workers.models import Worker


def enabled_workers() -> list[tuple[str, str]]:
    """(name, address) of the remote workers requests may go to."""
    return list(Worker.objects.filter(enabled=True).values_list("name", "address"))


def all_workers() -> list[Worker]:
    return list(Worker.objects.all())
