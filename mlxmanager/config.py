"""Environment-driven paths and secrets, shared by settings and by the worker.

Kept free of Django imports so the worker process can read the same values.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from inference.env import PRIVATE_UMASK, data_dir, make_private, worker_socket

__all__ = ["PRIVATE_UMASK", "data_dir", "make_private", "read_or_create_secret", "worker_socket"]


def read_or_create_secret(path: Path, nbytes: int = 48) -> str:
    """Return the secret stored at `path`, creating it with 0600 permissions if missing."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(nbytes)
    # O_EXCL: two processes starting at once must agree on one secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value
