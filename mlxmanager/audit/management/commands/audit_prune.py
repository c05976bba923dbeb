"""`manage.py audit_prune [--days N]`: delete request rows older than the retention."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from mlxmanager.audit.services import audit_prune


class Command(BaseCommand):
    help = "Delete audit-log request rows older than N days (default: MLXM_AUDIT_RETENTION_DAYS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=None)

    def handle(self, *args: Any, **opts: Any) -> None:
        days = opts["days"] if opts["days"] is not None else settings.MLXM_AUDIT_RETENTION_DAYS
        if days < 1:
            raise CommandError("retention is off (0 days); pass --days N to prune anyway")
        deleted = audit_prune(days=days)
        self.stdout.write(f"deleted {deleted} request rows older than {days} days")
