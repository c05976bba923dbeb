"""Environment-driven paths and secrets, shared by settings and by the worker.

Kept free of Django imports so the worker process can read the same values.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from inference.env import PRIVATE_UMASK, data_dir, make_private, queue_limits, worker_socket

__all__ = [
    "PRIVATE_UMASK",
    "data_dir",
    "make_private",
    "queue_limits",
    "read_or_create_secret",
    "worker_socket",
]


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


# ---- request limits (read by settings, the ASGI edge and the web server's protocol) -----------


def max_body_bytes() -> int:
    """Request bodies over this are refused with 413 (chat prompts and audio, not uploads)."""
    return int(os.environ.get("MLXM_MAX_BODY_BYTES", str(32 * 1024 * 1024)))


def body_read_timeout() -> float:
    """Seconds the next piece of a request body may take to arrive (408 past it)."""
    return float(os.environ.get("MLXM_BODY_READ_TIMEOUT", "30"))


def max_header_bytes() -> int:
    """The request line and headers together: over this, 431."""
    return int(os.environ.get("MLXM_MAX_HEADER_BYTES", str(64 * 1024)))


def priority_weights() -> dict[str, float]:
    """MLXM_PRIORITY_WEIGHTS, "admin=2" or "admin=3,member=1": the weight of a role's turns in
    the worker's fair queue (inference/worker/fairness.py); a role not named weighs 1."""
    weights: dict[str, float] = {}
    for part in os.environ.get("MLXM_PRIORITY_WEIGHTS", "").split(","):
        if not part.strip():
            continue
        role, sep, value = (x.strip() for x in part.partition("="))
        try:
            weight = float(value)
        except ValueError:
            weight = 0.0
        if not sep or role not in ("admin", "member") or not 0 < weight < 1000:
            raise ValueError(
                f"MLXM_PRIORITY_WEIGHTS: {part.strip()!r} is not ROLE=WEIGHT with a role of admin or "
                'member and a weight above 0 and below 1000 (e.g. "admin=2")'
            )
        weights[role] = weight
    return weights


def header_read_timeout() -> float:
    """Seconds a request's line and headers may take to arrive, from the connection or the
    request's first byte (408 and a close past it)."""
    return float(os.environ.get("MLXM_HEADER_READ_TIMEOUT", "30"))
