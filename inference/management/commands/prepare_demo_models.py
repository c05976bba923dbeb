"""`manage.py prepare_demo_models`: build the offline demo models into the data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Build the bundled demo models (SmolLM2-135M-Instruct from its GGUF, and a tiny "
        "random test model) under <data dir>/models/, skipping ones already built, and "
        "create their profiles."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="data directory (default: settings.MLXM_DATA_DIR)",
        )
        parser.add_argument("--force", action="store_true", help="rebuild even if present")
        parser.add_argument(
            "--no-profiles", action="store_true", help="only build; don't create their profiles"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        # Imported here so other management commands don't pay for it.
        from inference.worker.demo_models import prepare_demo_models

        data_dir = opts["data_dir"] or getattr(settings, "MLXM_DATA_DIR", Path.home() / ".mlxmanager")
        # Build progress only at -v 2; the summary below is the one line per model.
        verbose = opts["verbosity"] >= 2
        paths = prepare_demo_models(
            Path(data_dir),
            force=opts["force"],
            log=lambda msg: self.stdout.write(msg) if verbose or msg.startswith("skipped") else None,
        )
        for name, path in paths.items():
            self.stdout.write(f"{name}: {path}")
        if not opts["no_profiles"]:
            from mlxmanager.profiles.services import profile_ensure_demo

            for profile in profile_ensure_demo(models=paths):
                self.stdout.write(f"created profile '{profile.name}'")
