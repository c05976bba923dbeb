"""Where things live, from the environment: shared by the web side and the worker.

No Django here (the worker imports it); `mlxmanager.config` re-exports these for the web side.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Where models, the SQLite database, sockets and secrets live."""
    raw = os.environ.get("MLXM_DATA_DIR") or str(Path.home() / ".mlxmanager")
    path = Path(raw).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def worker_socket(base: Path | None = None) -> str:
    """The Unix socket the inference worker listens on."""
    return os.environ.get("MLXM_WORKER_SOCKET") or str((base or data_dir()) / "worker.sock")
