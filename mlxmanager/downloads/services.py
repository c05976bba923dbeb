"""Writes: start, pause, resume, cancel and remove downloads; delete local models.

The web process never transfers bytes. It changes a download's `status`; the download
worker (`manage.py downloader`, started by `serve`) polls for those changes, runs
the transfers and persists their progress.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from mlxmanager.downloads import hub, selectors, storage
from mlxmanager.downloads.errors import HubAccessDenied, InsufficientStorage
from mlxmanager.downloads.models import Conversion, Download, HubToken
from mlxmanager.errors import Conflict, DomainError, NotFound

log = logging.getLogger(__name__)

Status = Download.Status


def ensure_disk_space(*, needed: int, where: Path, repo_id: str) -> None:
    free = storage.free_bytes(where)
    if needed > free:
        raise InsufficientStorage(
            f"Not enough disk space for {repo_id}: it needs {filesizeformat(needed)} more, "
            f"and only {filesizeformat(free)} is free in {where}."
        )


def _files_with_progress(local_dir: Path, files: list[hub.HubFile]) -> list[dict[str, object]]:
    """The file list, each with the bytes already on disk (finished or partial)."""
    out: list[dict[str, object]] = []
    for f in files:
        if not storage.is_safe_file_name(local_dir, f.name):
            # The downloader refuses it (and fails the download): nothing to look up on disk.
            out.append({"name": f.name, "size": f.size, "sha256": f.sha256, "done": 0})
            continue
        final = local_dir / f.name
        done = f.size if storage.file_size(final) == f.size and final.is_file() else 0
        if not done:
            done = min(f.size, storage.file_size(storage.partial_path(local_dir, f.name)))
        out.append({"name": f.name, "size": f.size, "sha256": f.sha256, "done": done})
    return out


def download_create(
    *, repo_id: str, revision: str = "main", user: User | None = None, now: datetime | None = None
) -> Download:
    """Queue a download of `repo_id` (or restart a paused, failed or cancelled one)."""
    repo_id = hub.check_repo_id(repo_id)
    revision = (revision or "main").strip()
    local_dir = storage.local_dir_for(repo_id)
    existing = Download.objects.filter(local_dir=str(local_dir)).first()
    if existing is not None and existing.is_active:
        raise Conflict(f"Already downloading {repo_id}.")
    if (
        existing is None
        and local_dir.exists()
        and any(local_dir.iterdir())
        and not (local_dir / storage.PARTIAL_DIR).exists()
    ):
        raise Conflict(
            f"The folder {local_dir} already exists: delete it in Local models first.", param="repo_id"
        )
    if (
        existing is not None
        and existing.status == Status.COMPLETED
        and local_dir.is_dir()
        and not (local_dir / storage.PARTIAL_DIR).exists()
    ):
        raise Conflict(f"Already downloaded: {repo_id} is in Local models.")

    detail = selectors.hub_model_detail(repo_id=repo_id, revision=revision)
    if not detail.has_weights:
        raise DomainError(
            f"{repo_id} has no MLX weights (.safetensors or .npz files), so MLX cannot load it as is.",
            param="repo_id",
        )
    if detail.gated and not hub.token():
        raise HubAccessDenied(
            f"'{repo_id}' is a gated model: accept its terms on its Hugging Face page, then save a "
            "Hugging Face token (Discover page) or set HF_TOKEN, of an account that has access."
        )
    files = _files_with_progress(local_dir, detail.download_files)
    total = sum(int(f["size"]) for f in files)  # type: ignore[call-overload]
    done = sum(int(f["done"]) for f in files)  # type: ignore[call-overload]
    ensure_disk_space(needed=total - done, where=storage.models_dir(), repo_id=repo_id)

    now = now or timezone.now()
    fields = {
        "repo_id": repo_id,
        "revision": revision,
        "commit": detail.sha,
        "status": Status.QUEUED,
        "files": files,
        "bytes_total": total,
        "bytes_done": done,
        "speed": 0.0,
        "current_file": "",
        "error": "",
        "updated_at": now,
        "finished_at": None,
    }
    try:
        with transaction.atomic():
            if existing is not None:
                # Conditional: a concurrent resume or worker claim must not be overwritten.
                updated = Download.objects.filter(pk=existing.pk, status=existing.status).update(**fields)
                if not updated:
                    raise Conflict(
                        f"The download of {repo_id} changed state meanwhile; reload and try again."
                    )
                existing.refresh_from_db()
                return existing
            return Download.objects.create(
                local_dir=str(local_dir), created_by=user, created_at=now, **fields
            )
    except IntegrityError as exc:
        raise Conflict(f"Already downloading {repo_id}.") from exc


def download_pause(*, download_id: int, now: datetime | None = None) -> Download:
    """Stop transferring; the bytes already on disk are kept for the resume."""
    now = now or timezone.now()
    if Download.objects.filter(pk=download_id, status__in=Download.ACTIVE).update(
        status=Status.PAUSED, speed=0, updated_at=now
    ):
        return selectors.download_get(download_id=download_id)
    download = selectors.download_get(download_id=download_id)
    if download.status == Status.PAUSED:
        return download
    raise Conflict(f"A {download.get_status_display().lower()} download cannot be paused.")


def download_resume(*, download_id: int, now: datetime | None = None) -> Download:
    """Queue it again; the worker continues from the partial bytes on disk (HTTP range)."""
    now = now or timezone.now()
    download = selectors.download_get(download_id=download_id)
    if download.is_active:
        return download
    if download.status == Status.COMPLETED:
        raise Conflict("This download is already complete.")
    local_dir = Path(download.local_dir)
    files = [
        hub.HubFile(name=str(f["name"]), size=int(f["size"]), sha256=f.get("sha256")) for f in download.files
    ]
    files_now = _files_with_progress(local_dir, files)
    done = sum(int(f["done"]) for f in files_now)  # type: ignore[call-overload]
    ensure_disk_space(
        needed=download.bytes_total - done, where=storage.models_dir(), repo_id=download.repo_id
    )
    if not Download.objects.filter(pk=download_id, status=download.status).update(
        status=Status.QUEUED, error="", files=files_now, bytes_done=done, speed=0, updated_at=now,
        finished_at=None,
    ):  # fmt: skip
        raise Conflict("The download changed state meanwhile; reload and try again.")
    return selectors.download_get(download_id=download_id)


def download_cancel(*, download_id: int, now: datetime | None = None) -> Download:
    """Stop and delete the partial files. A running transfer is stopped by the worker, which
    deletes the files once it has let go of them."""
    now = now or timezone.now()
    idle = (Status.QUEUED, Status.PAUSED, Status.FAILED)
    for _attempt in range(3):
        download = selectors.download_get(download_id=download_id)
        if download.status == Status.CANCELLED:
            return download
        if download.status == Status.COMPLETED:
            raise Conflict("This download is complete: delete the model in Local models instead.")
        reset = [{**f, "done": 0} for f in download.files]
        if download.status in idle:
            # Only QUEUED rows are ever claimed by the worker, atomically: once this update
            # wins, nobody else touches the folder.
            if Download.objects.filter(pk=download_id, status=download.status).update(
                status=Status.CANCELLED, speed=0, bytes_done=0, files=reset, current_file="",
                updated_at=now, finished_at=now,
            ):  # fmt: skip
                storage.remove_tree(Path(download.local_dir), within=storage.models_dir())
                return selectors.download_get(download_id=download_id)
        elif Download.objects.filter(pk=download_id, status=Status.RUNNING).update(
            status=Status.CANCELLED, speed=0, updated_at=now, finished_at=now
        ):
            return selectors.download_get(download_id=download_id)
    raise Conflict("The download changed state meanwhile; reload and try again.")


def download_remove(*, download_id: int) -> None:
    """Forget a completed or cancelled download (the model itself stays on disk)."""
    download = selectors.download_get(download_id=download_id)
    if download.status not in Download.FINISHED:
        raise Conflict("Only completed or cancelled downloads can be removed from the list; cancel it first.")
    Download.objects.filter(pk=download_id, status__in=Download.FINISHED).delete()


def local_model_delete(*, model_id: str) -> selectors.LocalModel:
    """Delete a model from disk, unless a profile uses it."""
    model = selectors.local_model_get(model_id=model_id)
    if model.used_by:
        names = ", ".join(model.used_by)
        plural = "s" if len(model.used_by) > 1 else ""
        raise Conflict(
            f"Can't delete {model.name}: the profile{plural} {names} use{'' if plural else 's'} it. "
            f"Change or delete the profile{plural} first."
        )
    if model.source == selectors.SOURCE_MODELS:
        if Download.objects.filter(local_dir=str(model.path), status__in=Download.ACTIVE).exists():
            raise Conflict(f"Can't delete {model.name} while it downloads: cancel the download first.")
        storage.remove_tree(model.path, within=storage.models_dir())
        Download.objects.filter(local_dir=str(model.path), status=Status.COMPLETED).delete()
    elif model.source == selectors.SOURCE_HF_CACHE and model.commit:
        from huggingface_hub import scan_cache_dir

        cache_dir = model.path.parent.parent.parent  # <cache>/models--org--name/snapshots/<commit>
        scan_cache_dir(cache_dir).delete_revisions(model.commit).execute()
    else:
        raise Conflict(f"MLX Manager does not delete models in configured folders ({model.path}).")
    log.info("deleted local model %s (%s)", model.name, model.path)
    return model


# --- the Hugging Face token ----------------------------------------------------------

MAX_TOKEN = 512


def hub_token_set(*, token: str, user: Any = None) -> HubToken:
    """Store the token encrypted (replacing any stored one); it wins over HF_TOKEN."""
    from mlxmanager.credentials import crypto

    token = (token or "").strip()
    if not token:
        raise DomainError("the token is empty", param="token")
    if len(token) > MAX_TOKEN or any(c.isspace() for c in token) or not token.isprintable():
        raise DomainError(
            "that is not a Hugging Face token (one word, at most 512 characters)", param="token"
        )
    sealed, kid = crypto.encrypt(token)
    with transaction.atomic():
        row, created = HubToken.objects.update_or_create(
            pk=1,
            defaults={"secret_jwe": sealed, "key_id": kid, "hint": token[-4:], "updated_at": timezone.now()},
        )
        row.log_action(
            "mlxmanager.hub_token.set", user=user, data={"replaced": not created, "hint": row.hint}
        )
    hub.forget_stored_token()
    return row


def hub_token_clear(*, user: Any = None) -> bool:
    """Remove the stored token (HF_TOKEN from the environment applies again). False if none."""
    with transaction.atomic():
        row = HubToken.objects.filter(pk=1).first()
        if row is None:
            return False
        row.log_action("mlxmanager.hub_token.removed", user=user, data={"hint": row.hint})
        row.delete()
    hub.forget_stored_token()
    return True


def hub_token_reencrypt() -> int:
    """Seal the stored token under the current key (key rotation); 1 if it changed."""
    from mlxmanager.credentials import crypto

    with transaction.atomic():
        row = HubToken.objects.select_for_update().filter(pk=1).first()
        if row is None or row.key_id == crypto.keyring.current.kid:
            return 0
        row.secret_jwe, row.key_id = crypto.encrypt(crypto.decrypt(row.secret_jwe))
        row.save(update_fields=["secret_jwe", "key_id"])
    hub.forget_stored_token()
    return 1


# --- conversions (transformers checkpoint → MLX) --------------------------------------

Q_BITS = (2, 3, 4, 5, 6, 8)
Q_GROUP_SIZES = (32, 64, 128)
DTYPES = ("float16", "bfloat16", "float32")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _checkpoint(source: str) -> Path:
    """The checkpoint folder, checked: config.json, safetensors weights, not MLX-quantized."""
    path = Path((source or "").strip()).expanduser()
    if not source or not path.is_absolute():
        raise DomainError("give the checkpoint's folder as an absolute path", param="source")
    if not path.is_dir():
        raise DomainError(f"{path} is not a folder on this machine", param="source")
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError as exc:
        raise DomainError(
            f"{path} has no config.json: not a transformers checkpoint", param="source"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DomainError(f"{config_file} is not readable JSON", param="source") from exc
    if not isinstance(config, dict) or not config.get("model_type"):
        raise DomainError(f"{config_file} names no model_type", param="source")
    if "quantization" in config:
        raise DomainError(f"{path} is already a quantized MLX model", param="source")
    if not any(path.glob("*.safetensors")):
        raise DomainError(
            f"{path} has no .safetensors weights (mlx_lm.convert reads safetensors only)", param="source"
        )
    return path


def conversion_create(
    *,
    source: str,
    name: str,
    q_bits: int | None = None,
    q_group_size: int = 64,
    dtype: str = "",
    user: Any = None,
) -> Conversion:
    """Queue a conversion; the downloader runs it. The output goes to MLXM_MODELS_DIR/<name>."""
    path = _checkpoint(source)
    name = (name or "").strip()
    if not _NAME.match(name):
        raise DomainError(
            "the name must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param="name",
        )
    if q_bits is not None and q_bits not in Q_BITS:
        raise DomainError(f"q_bits must be one of {', '.join(map(str, Q_BITS))}", param="q_bits")
    if q_group_size not in Q_GROUP_SIZES:
        raise DomainError(
            f"q_group_size must be one of {', '.join(map(str, Q_GROUP_SIZES))}", param="q_group_size"
        )
    if dtype and dtype not in DTYPES:
        raise DomainError(f"dtype must be one of {', '.join(DTYPES)}", param="dtype")
    output = storage.models_dir() / name
    if output.exists():
        raise Conflict(f"{output} already exists: choose another name", param="name")
    if Conversion.objects.filter(output_dir=str(output), status__in=Conversion.ACTIVE).exists():
        raise Conflict(f"a conversion into {name} is already under way", param="name")
    with transaction.atomic():
        conversion = Conversion.objects.create(
            source=str(path),
            name=name,
            output_dir=str(output),
            q_bits=q_bits,
            q_group_size=q_group_size,
            dtype=dtype,
            created_by=user if getattr(user, "pk", None) else None,
        )
        conversion.log_action(
            "mlxmanager.conversion.created",
            user=user,
            data={"source": str(path), "name": name, "recipe": conversion.recipe},
        )
    return conversion


def conversion_cancel(*, conversion_id: int, user: Any = None) -> Conversion:
    """Stop a queued or running conversion (the worker kills its process and cleans up)."""
    with transaction.atomic():
        conversion = Conversion.objects.select_for_update().filter(pk=conversion_id).first()
        if conversion is None:
            raise NotFound(f"no conversion {conversion_id}")
        if not conversion.is_active:
            raise Conflict(f"the conversion is {conversion.get_status_display().lower()}, not under way")
        conversion.status = Conversion.Status.CANCELLED
        conversion.finished_at = conversion.updated_at = timezone.now()
        conversion.save(update_fields=["status", "finished_at", "updated_at"])
        conversion.log_action("mlxmanager.conversion.cancelled", user=user, data={"name": conversion.name})
    return conversion


def conversion_retry(*, conversion_id: int, user: Any = None) -> Conversion:
    """Queue a failed or cancelled conversion again, with the same source, name and recipe;
    the old row gives way to the new one."""
    old = Conversion.objects.filter(pk=conversion_id).first()
    if old is None:
        raise NotFound(f"no conversion {conversion_id}")
    if old.status not in (Conversion.Status.FAILED, Conversion.Status.CANCELLED):
        raise Conflict(
            f"the conversion is {old.get_status_display().lower()}: only a failed or cancelled one is retried"
        )
    with transaction.atomic():
        new = conversion_create(
            source=old.source, name=old.name, q_bits=old.q_bits, q_group_size=old.q_group_size,
            dtype=old.dtype, user=user,
        )  # fmt: skip
        Conversion.objects.filter(pk=old.pk).delete()
    return new


def conversion_dismiss(*, conversion_id: int, user: Any = None) -> None:
    """Forget a finished conversion (failed, cancelled or completed); its output, if any, stays."""
    with transaction.atomic():
        conversion = Conversion.objects.select_for_update().filter(pk=conversion_id).first()
        if conversion is None:
            raise NotFound(f"no conversion {conversion_id}")
        if conversion.is_active:
            raise Conflict("the conversion is under way: cancel it first")
        conversion.log_action("mlxmanager.conversion.dismissed", user=user, data={"name": conversion.name})
        conversion.delete()
