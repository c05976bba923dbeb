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


class UnsafeFileName(ValueError):
    """A file name from the hub that would land outside the model folder."""


def check_file_name(local_dir: Path, filename: str) -> Path:
    """`local_dir / filename` for a file name the hub listed (`rfilename`), refusing an empty or
    absolute name, a `..` part, and anything that resolves outside the model folder (through a
    symlink, say): the name comes from the network and is joined onto a path we write to."""
    parts = filename.replace("\\", "/").split("/")
    if not filename or "\0" in filename or Path(filename).is_absolute() or parts[0] == "" or ".." in parts:
        raise UnsafeFileName(filename)
    final = local_dir / filename
    try:
        inside = is_inside(final, local_dir) and is_inside(partial_path(local_dir, filename), local_dir)
    except (OSError, RuntimeError):  # a symlink loop, a name the OS refuses
        inside = False
    if not inside:
        raise UnsafeFileName(filename)
    return final


def is_safe_file_name(local_dir: Path, filename: str) -> bool:
    try:
        check_file_name(local_dir, filename)
    except UnsafeFileName:
        return False
    return True


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
