"""`manage.py downloader`: run model downloads (started and supervised by `serve`)."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from inference import logsetup
from mlxmanager.downloads.manager import DownloadManager
from mlxmanager.request_ids import RequestIdFilter

LOCK_FILE = "downloads.lock"
LOG_NAME = "downloads"


class Command(BaseCommand):
    help = (
        "Run the downloader: transfers queued model downloads, persists their progress and "
        "resumes interrupted ones. One runs per data dir; a second one waits as a standby."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="downloads at once (default: MLXM_DOWNLOAD_CONCURRENCY, 2)",
        )
        parser.add_argument(
            "--chunk-bytes",
            type=int,
            default=None,
            help="bytes read per write: progress and pause granularity (default 1 MiB)",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        stopping = threading.Event()

        def _stop(signum: int, frame: object) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

        lock_path = Path(settings.MLXM_DATA_DIR) / LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            announced = False
            while not stopping.is_set():
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not announced:
                        self.stderr.write(f"another downloader holds {lock_path}; waiting as a standby")
                        announced = True
                    stopping.wait(2.0)
            if stopping.is_set():
                return
            # Its own file beside the console, <data dir>/logs/downloads.log (inference/logsetup.py),
            # written by the lock holder only: a standby doesn't rotate it under the running one.
            logsetup.add_file(LOG_NAME, Path(settings.MLXM_DATA_DIR), filters=[RequestIdFilter()])
            manager = DownloadManager(concurrency=opts["concurrency"], chunk_size=opts["chunk_bytes"])
            manager.start()
            self.stdout.write(f"downloader running ({manager.concurrency} at once)")
            self.stdout.flush()
            while not stopping.wait(1.0):
                pass
            manager.stop()
        finally:
            os.close(fd)  # releases the lock
