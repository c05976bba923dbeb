import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run the inference worker on its own (for launchd/systemd); `serve` runs it for you."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--socket", default=None, help="Unix socket path (default: MLXM_WORKER_SOCKET)")
        parser.add_argument("--listen", default=None, metavar="HOST:PORT", help="also serve over TCP")
        parser.add_argument("--secret-file", default=None, help="shared secret (else MLXM_WORKER_SECRET)")
        parser.add_argument("--tls-cert", default=None)
        parser.add_argument("--tls-key", default=None)

    def handle(self, *args: object, **opts: object) -> None:
        # The worker is its own program (no Django, no ORM): this process becomes it.
        argv = [
            sys.executable,
            "-m",
            "inference.worker",
            "--socket",
            str(opts["socket"] or settings.MLXM_WORKER_SOCKET),
        ]
        for name in ("listen", "secret_file", "tls_cert", "tls_key"):
            if opts.get(name):
                argv += ["--" + name.replace("_", "-"), str(opts[name])]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)  # noqa: S606 (our own interpreter, fixed arguments)
