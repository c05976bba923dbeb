"""`manage.py prepare_demo_models`: build the offline demo models into the data dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


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
        data_dir = opts["data_dir"] or getattr(settings, "MLXM_DATA_DIR", Path.home() / ".mlxmanager")
        # MLX builds the models, so the worker's side does it, in a process of its own.
        argv = [sys.executable, "-m", "inference.worker.testmodels", "--data-dir", str(data_dir)]
        if opts["force"]:
            argv.append("--force")
        if opts["verbosity"] >= 2:  # build progress; the summary below is one line per model
            argv.append("--verbose")
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise CommandError(f"building the demo models failed (exit {done.returncode})")
        lines = done.stdout.splitlines()
        for line in lines[:-1]:
            self.stdout.write(line)
        paths = {name: Path(p) for name, p in json.loads(lines[-1]).items()}
        for name, path in paths.items():
            self.stdout.write(f"{name}: {path}")
        if not opts["no_profiles"]:
            from mlxmanager.profiles.services import profile_ensure_demo

            for profile in profile_ensure_demo(models=paths):
                self.stdout.write(f"created profile '{profile.name}'")
