"""Where downloaded models live on disk, and how much room there is."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from django.conf import settings

# Partial files live in this folder inside the model folder until the download completes;
# scanners skip folders that still contain it.
PARTIAL_DIR = ".mlxm-download"
PARTIAL_SUFFIX = ".incomplete"


def models_dir() -> Path:
    return Path(settings.MLXM_MODELS_DIR)


def local_dir_for(repo_id: str) -> Path:
    """models/<org>--<name>, the layout the Hugging Face cache uses for a repo folder."""
    return models_dir() / repo_id.replace("/", "--")


def partial_path(local_dir: Path, filename: str) -> Path:
    return local_dir / PARTIAL_DIR / (filename + PARTIAL_SUFFIX)


def free_bytes(path: Path) -> int:
    """Free space on the filesystem that holds `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 0


def dir_size(path: Path) -> int:
    """Bytes of the regular files under `path`; symlinks are not followed or counted."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def is_inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return path.resolve() != parent.resolve()


def remove_tree(path: Path, *, within: Path) -> None:
    """Delete a model folder, refusing anything outside `within` (a bad row must never rm -rf /)."""
    if not is_inside(path, within):
        raise ValueError(f"refusing to delete {path}: not inside {within}")
    shutil.rmtree(path, ignore_errors=True)
