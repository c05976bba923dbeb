"""Register, switch and remove remote workers (admins)."""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, transaction

from mlxmanager.errors import Conflict, DomainError, NotFound
from mlxmanager.workers.models import Worker

_ADDRESS = re.compile(r"^(?:(tcp|tls)://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):(\d{1,5})$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def normalise_address(value: Any) -> str:
    text = str(value or "").strip()
    m = _ADDRESS.match(text)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise DomainError(
            "the address must be HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT", param="address"
        )
    return f"{m.group(1) or 'tcp'}://{m.group(2)}:{int(m.group(3))}"


def worker_create(*, name: Any, address: Any) -> Worker:
    clean = str(name or "").strip().lower()
    if not _NAME.match(clean):
        raise DomainError("a name is 1-64 lowercase letters, digits, '-' or '_'", param="name")
    addr = normalise_address(address)
    try:
        with transaction.atomic():
            return Worker.objects.create(name=clean, address=addr)
    except IntegrityError as exc:
        raise Conflict(f"a worker named '{clean}' or at {addr} is already registered") from exc


def worker_get(worker_id: int) -> Worker:
    try:
        return Worker.objects.get(pk=worker_id)
    except Worker.DoesNotExist as exc:
        raise NotFound("no such worker") from exc


def worker_set_enabled(*, worker: Worker, enabled: bool) -> Worker:
    worker.enabled = enabled
    worker.save(update_fields=["enabled"])
    return worker


def worker_delete(*, worker: Worker) -> None:
    worker.delete()
