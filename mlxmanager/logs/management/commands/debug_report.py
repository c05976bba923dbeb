"""`manage.py debug_report [--output PATH]`: the Logs page's debug report, as a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandParser

from mlxmanager.logs import report


class Command(BaseCommand):
    help = (
        "Write a debug report (.zip): versions, platform, settings and environment with secrets "
        "removed, health, the pool, recent errors and the end of each log file."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output",
            default=None,
            help="file or folder to write (default: mlxmanager-debug-<time>.zip here)",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        name, data = async_to_sync(report.build)()
        target = Path(opts["output"] or name).expanduser()
        if target.is_dir():
            target = target / name
        # Owner-only, like everything else this product writes.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        self.stdout.write(str(target))
