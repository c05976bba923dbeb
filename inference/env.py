"""Where things live, from the environment: shared by the web side and the worker.

No Django here (the worker imports it); `mlxmanager.config` re-exports these for the web side.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

# Files this process creates are its owner's only (0600 files, 0700 folders): the SQLite
# database and its -wal/-shm, secrets, sockets and downloaded models.
PRIVATE_UMASK = 0o077


def _env_number(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be 0 or more, not {raw!r}")
    return value


def queue_limits(env: Mapping[str, str] | None = None) -> tuple[int | None, int | None, float | None]:
    """The worker's queue limits (inference/worker/fairness.py), None where unset: requests
    that may wait per model (MLXM_MAX_QUEUE), one user's requests per model
    (MLXM_MAX_USER_CONCURRENT), seconds one may wait (MLXM_QUEUE_TIMEOUT; 0: no limit). The
    web side reads them too, so that a bad value stops `serve` at start (ValueError)."""
    env = os.environ if env is None else env
    max_queue = _env_number(env, "MLXM_MAX_QUEUE", int)
    max_user = _env_number(env, "MLXM_MAX_USER_CONCURRENT", int)
    timeout = _env_number(env, "MLXM_QUEUE_TIMEOUT", float)
    if max_user == 0:
        raise ValueError("MLXM_MAX_USER_CONCURRENT must be 1 or more (unset: no limit)")
    return (
        None if max_queue is None else int(max_queue),
        None if max_user is None else int(max_user),
        timeout or None,
    )


def data_dir() -> Path:
    """Where models, the SQLite database, sockets and secrets live: created owner-only, and
    made owner-only if an older install left it (or the files directly in it) readable by
    others. Sets the process's umask so that what is created later is owner-only too (child
    processes such as the worker inherit it)."""
    os.umask(PRIVATE_UMASK)
    raw = os.environ.get("MLXM_DATA_DIR") or str(Path.home() / ".mlxmanager")
    path = Path(raw).expanduser().resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(path)
    return path


def make_private(path: Path) -> None:
    """Take group and other permissions off `path` and off the files directly in it (an install
    from before the umask had a 0755 folder and a 0644 database). Entries owned by someone else,
    or gone meanwhile, are left alone."""
    for entry in (path, *path.iterdir()):
        try:
            st = entry.lstat()
            if stat.S_ISLNK(st.st_mode) or not stat.S_IMODE(st.st_mode) & 0o077:
                continue
            entry.chmod(stat.S_IMODE(st.st_mode) & ~0o077)
        except OSError:
            continue


def worker_socket(base: Path | None = None) -> str:
    """The Unix socket the inference worker listens on."""
    return os.environ.get("MLXM_WORKER_SOCKET") or str((base or data_dir()) / "worker.sock")
