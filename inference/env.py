"""Where things live, from the environment: shared by the web side and the worker.

No Django here (the worker imports it); `mlxmanager.config` re-exports these for the web side.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


# ---- the worker's memory limit (inference/worker/memory.py) --------------------------------

DEFAULT_LIMIT_SHARE = 0.75  # of physical memory
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def parse_size(raw: str | int, *, of: int | None = None, name: str = "size") -> int:
    """Bytes from `raw`: a byte count ("1000000000"), a size ("12GB", "800MB", "1.5GiB"; GB
    is 10^9, GiB 2^30) or, when `of` is given, a percentage of it ("75%")."""
    if isinstance(raw, int):
        return raw
    text = raw.strip()
    if text.endswith("%"):
        if of is None:
            raise ValueError(f"{name}: a percentage is not accepted here ({raw!r})")
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"{name}: {raw!r} is not a percentage like '75%'") from None
        if not 0 < pct <= 100:
            raise ValueError(f"{name}: {raw!r} must be a percentage between 0 and 100")
        return int(of * pct / 100)
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{name}: {raw!r} is not a size like '12GB', '800MB', '75%' or a byte count")
    return int(float(match.group(1)) * _UNITS[unit])


def memory_limit_from_env(env: Any = None) -> int:
    """MLXM_MEMORY_LIMIT (bytes, a size or a percentage of RAM), else its older spelling
    MLXM_MEMORY_LIMIT_BYTES, else 75% of physical memory."""
    env = os.environ if env is None else env
    total = physical_memory()
    for name in ("MLXM_MEMORY_LIMIT", "MLXM_MEMORY_LIMIT_BYTES"):
        raw = env.get(name)
        if raw:
            return parse_size(raw, of=total, name=name)
    return int(total * DEFAULT_LIMIT_SHARE)
