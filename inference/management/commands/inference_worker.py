from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run the inference worker on its own (for launchd/systemd); `serve` runs it for you."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--socket", default=None, help="Unix socket path (default: MLXM_WORKER_SOCKET)")

    def handle(self, *args: object, **opts: object) -> None:
        from inference.worker.__main__ import main

        main(["--socket", str(opts["socket"] or settings.MLXM_WORKER_SOCKET)])
