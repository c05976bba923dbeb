"""The downloader: runs transfers, persists their progress, obeys pause/resume/cancel.

One `DownloadManager` runs per data dir, in its own process (`manage.py downloader`,
started and restarted by `serve`), so downloads neither die with the inference worker
nor with a web process, and several web processes never race to resume the same one.
The database is the only channel: the web process changes a download's `status`, the
control thread here notices within `poll_interval`, claims queued downloads atomically
and writes progress every `persist_interval`.

Bytes move through huggingface_hub's own machinery: `get_hf_file_metadata` (the HEAD on
/resolve, hub redirects, X-Repo-Commit/ETag/X-Linked-Size) and `http_get`, which sends
`Range: bytes=<partial size>-` and retries dropped connections. `hf_hub_download` is not
used for the weights: since huggingface_hub 2.x it writes to a per-process temporary file
that it deletes on failure, so an interrupted file would start again from zero.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from django.conf import settings
from django.db import OperationalError, close_old_connections, connection
from django.db.models import QuerySet
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

from mlxmanager.downloads import hub, selectors, storage
from mlxmanager.downloads.conversions import ConversionRunner
from mlxmanager.downloads.models import Download

log = logging.getLogger(__name__)

Status = Download.Status

# Why a transfer stopped before its end.
STOP_PAUSED = "paused"
STOP_CANCELLED = "cancelled"
STOP_REQUEUED = "queued"  # paused and resumed before the transfer had let go
STOP_SHUTDOWN = "shutdown"  # the worker is stopping: the download stays "running" and resumes on restart


_STOP_FOR_STATUS: dict[str, str] = {Status.PAUSED: STOP_PAUSED, Status.CANCELLED: STOP_CANCELLED}


class _Stopped(Exception):
    pass


class TransferError(Exception):
    """A failure with a message meant for the admin."""


def _update(queryset: QuerySet[Download], **fields: Any) -> int:
    """`queryset.update(...)`, retried when SQLite answers "database is locked" (writers
    colliding past the busy timeout)."""
    for attempt in range(5):
        try:
            return queryset.update(**fields)
        except OperationalError as exc:
            if "locked" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    return 0


class _NoProgressBar:
    """http_get's progress bar, silenced: progress goes to the database instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _NoProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        pass


class _Sink:
    """The partial file as http_get sees it: counts bytes and stops the transfer on request."""

    def __init__(self, fh: BinaryIO, *, on_size: Callable[[int], None], stop: threading.Event) -> None:
        self._fh = fh
        self._on_size = on_size
        self._stop = stop

    def write(self, chunk: bytes) -> int:
        # Keep what already arrived, then stop: a resume need not fetch these bytes again.
        written = self._fh.write(chunk)
        self._on_size(self._fh.tell())
        if self._stop.is_set():
            raise _Stopped
        return written

    # http_get rewinds when a server ignores the Range header and sends the whole file.
    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        result = self._fh.truncate(size)
        self._on_size(self._fh.tell())
        return result

    def flush(self) -> None:
        self._fh.flush()


@dataclass
class _FileState:
    name: str
    size: int
    sha256: str | None
    done: int


class Transfer:
    """One download on its own thread; progress lives in memory, the manager persists it."""

    def __init__(self, download: Download, *, metadata_attempts: int = 3) -> None:
        self.id = download.pk
        self.repo_id = download.repo_id
        self.commit = download.commit or download.revision
        self.local_dir = Path(download.local_dir)
        self.metadata_attempts = metadata_attempts
        self.files = [
            _FileState(name=str(f["name"]), size=int(f["size"]), sha256=f.get("sha256"), done=0)
            for f in download.files
        ]
        self.current_file = ""
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=12)
        self.thread = threading.Thread(target=self._run, name=f"download-{self.id}", daemon=True)
        self._scan_disk()

    # --- control (called from the manager's thread) -------------------------------

    def start(self) -> None:
        self.thread.start()

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    @property
    def bytes_done(self) -> int:
        with self._lock:
            return sum(f.done for f in self.files)

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    def speed(self, now: float | None = None) -> float:
        """Bytes/s over the last few seconds (samples are taken once per persist)."""
        now = now if now is not None else time.monotonic()
        self._samples.append((now, self.bytes_done))
        while len(self._samples) > 2 and now - self._samples[0][0] > 5.0:
            self._samples.popleft()
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return max(0.0, (b1 - b0) / (t1 - t0)) if t1 > t0 else 0.0

    def files_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"name": f.name, "size": f.size, "sha256": f.sha256, "done": f.done} for f in self.files]

    def progress_fields(self) -> dict[str, Any]:
        return {
            "bytes_done": self.bytes_done,
            "files": self.files_json(),
            "current_file": self.current_file,
            "speed": 0.0 if self._stop.is_set() else self.speed(),
            "updated_at": timezone.now(),
        }

    # --- the transfer (its own thread) --------------------------------------------

    def _unsafe_names(self) -> list[str]:
        return [f.name for f in self.files if not storage.is_safe_file_name(self.local_dir, f.name)]

    def _scan_disk(self) -> None:
        for f in self.files:
            if not storage.is_safe_file_name(self.local_dir, f.name):
                continue
            final = self.local_dir / f.name
            if final.is_file() and storage.file_size(final) == f.size:
                f.done = f.size
            else:
                f.done = min(f.size, storage.file_size(storage.partial_path(self.local_dir, f.name)))

    def _set_done(self, state: _FileState, value: int) -> None:
        with self._lock:
            state.done = value

    def _run(self) -> None:
        outcome, error = "completed", ""
        try:
            self._download_all()
        except _Stopped:
            outcome = self.stop_reason or STOP_SHUTDOWN
        except Exception as exc:
            if self._stop.is_set():  # a failure caused by our own stop (e.g. a closed stream)
                outcome = self.stop_reason or STOP_SHUTDOWN
            else:
                outcome, error = "failed", self._message(exc)
                if error.startswith("Unexpected"):
                    log.exception("download %s of %s failed", self.id, self.repo_id)
                else:
                    log.warning("download %s of %s failed: %s", self.id, self.repo_id, error)
        try:
            self._finish(outcome, error)
        finally:
            connection.close()

    def _download_all(self) -> None:
        # File names come from the hub: one that is absolute, has a `..` part or resolves
        # outside the model folder fails the whole download before anything is written.
        unsafe = self._unsafe_names()
        if unsafe:
            raise TransferError(
                f"The hub lists an unsafe file name for {self.repo_id}: {unsafe[0]!r} (absolute, with "
                "'..', or outside the model folder). Nothing was downloaded; this repository can't be "
                "downloaded as it is."
            )
        needed = self.bytes_total - self.bytes_done
        free = storage.free_bytes(self.local_dir.parent)
        if needed > free:
            raise TransferError(
                f"Not enough disk space: {filesizeformat(needed)} still to download, "
                f"{filesizeformat(free)} free in {self.local_dir.parent}. Free some space, then resume."
            )
        self.local_dir.mkdir(parents=True, exist_ok=True)
        (self.local_dir / storage.PARTIAL_DIR).mkdir(exist_ok=True)
        # Small files first: config and tokenizer land early, the weights last.
        for state in sorted(self.files, key=lambda f: (f.size, f.name)):
            if self._stop.is_set():
                raise _Stopped
            self._download_file(state)
        self.current_file = ""

    def _download_file(self, state: _FileState) -> None:
        final = storage.check_file_name(self.local_dir, state.name)
        if final.is_file() and storage.file_size(final) == state.size:
            self._set_done(state, state.size)
            return
        self.current_file = state.name
        partial = storage.partial_path(self.local_dir, state.name)
        partial.parent.mkdir(parents=True, exist_ok=True)
        meta = self._metadata(state.name)
        if meta.size is not None and meta.size != state.size:
            state.size = meta.size  # the hub knows better than the listing we stored
        resume = storage.file_size(partial)
        if resume > state.size:
            partial.unlink()
            resume = 0
        self._set_done(state, resume)
        if resume < state.size:
            url, headers = self._source(state.name, meta)
            with partial.open("ab") as fh:
                sink = _Sink(fh, on_size=lambda n: self._set_done(state, n), stop=self._stop)
                http_get(
                    url,
                    sink,  # type: ignore[arg-type]
                    resume_size=resume,
                    headers=headers,
                    expected_size=state.size,
                    displayed_filename=state.name,
                    tqdm_class=_NoProgressBar,  # type: ignore[arg-type]
                )
        if state.sha256:
            self._verify(partial, state)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        self._set_done(state, state.size)

    def _source(self, filename: str, meta: Any) -> tuple[str, dict[str, str]]:
        headers = build_hf_headers(token=hub.token() or False, library_name=hub.LIBRARY_NAME)
        resolve = hf_hub_url(self.repo_id, filename, revision=self.commit, endpoint=hub.endpoint())
        if meta.xet_file_data is not None:
            # Xet-backed file without the xet protocol: the resolve URL redirects to a plain
            # HTTP bridge that serves ranges (what huggingface_hub does without hf_xet).
            return resolve, headers
        if urlparse(meta.location).netloc != urlparse(resolve).netloc:
            headers.pop("authorization", None)  # never send the token to a CDN
        return meta.location, headers

    def _metadata(self, filename: str) -> Any:
        url = hf_hub_url(self.repo_id, filename, revision=self.commit, endpoint=hub.endpoint())
        for attempt in range(1, self.metadata_attempts + 1):
            try:
                return get_hf_file_metadata(
                    url, token=hub.token() or False, endpoint=hub.endpoint(), library_name=hub.LIBRARY_NAME
                )
            except Exception as exc:
                transient = (
                    isinstance(exc, HfHubHTTPError) and _status(exc) in (429, 500, 502, 503, 504)
                ) or (hub.is_network_error(exc))
                if not transient or attempt == self.metadata_attempts:
                    raise
                if self._stop.wait(float(attempt)):
                    raise _Stopped from exc
        raise AssertionError("unreachable")

    def _verify(self, partial: Path, state: _FileState) -> None:
        digest = hashlib.sha256()
        with partial.open("rb") as fh:
            for block in iter(lambda: fh.read(4 * 1024 * 1024), b""):
                if self._stop.is_set():
                    raise _Stopped
                digest.update(block)
        if digest.hexdigest() != state.sha256:
            partial.unlink(missing_ok=True)
            self._set_done(state, 0)
            raise TransferError(
                f"{state.name} does not match its checksum; the damaged file was deleted, resume to fetch it again."
            )

    def _message(self, exc: BaseException) -> str:
        name = self.current_file or "the model"
        if isinstance(exc, TransferError):
            return str(exc)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not isinstance(exc, HfHubHTTPError):
            return f"Disk full while writing {name}: free some space, then resume."
        error = hub.hub_error(exc, repo_id=self.repo_id, revision=self.commit)
        if error is not None:
            if hub.is_network_error(exc):
                return (
                    f"Network error while downloading {name}: {error.message} "
                    "Resume to continue from the bytes already downloaded."
                )
            return error.message
        if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
            return f"The connection dropped before {name} was complete. Resume to continue from where it stopped."
        return f"Unexpected error while downloading {name}: {type(exc).__name__}: {exc}"

    def _finish(self, outcome: str, error: str) -> None:
        now = timezone.now()
        rows = Download.objects.filter(pk=self.id)
        if outcome == "completed":
            storage.remove_tree(self.local_dir / storage.PARTIAL_DIR, within=self.local_dir)
            done = _update(
                rows.filter(status=Status.RUNNING),
                status=Status.COMPLETED,
                bytes_done=self.bytes_total,
                bytes_total=self.bytes_total,
                files=self.files_json(),
                speed=0,
                current_file="",
                error="",
                finished_at=now,
                updated_at=now,
            )
            if done:
                log.info("downloaded %s into %s", self.repo_id, self.local_dir)
                return
            status = rows.values_list("status", flat=True).first()
            outcome = STOP_CANCELLED if status in (Status.CANCELLED, None) else STOP_PAUSED
        if outcome == "failed":
            _update(
                rows.filter(status=Status.RUNNING),
                status=Status.FAILED,
                error=error,
                speed=0,
                files=self.files_json(),
                bytes_done=self.bytes_done,
                finished_at=now,
                updated_at=now,
            )
            return
        if outcome == STOP_CANCELLED:
            storage.remove_tree(self.local_dir, within=storage.models_dir())
            reset = [{**f, "done": 0} for f in self.files_json()]
            _update(
                rows.filter(status=Status.CANCELLED),
                bytes_done=0,
                files=reset,
                speed=0,
                current_file="",
                updated_at=now,
            )
            return
        # Paused, re-queued or shutting down: keep the partial bytes, record how far it got.
        _update(rows, bytes_done=self.bytes_done, files=self.files_json(), speed=0, updated_at=now)


def _status(exc: HfHubHTTPError) -> int | None:
    return exc.response.status_code if exc.response is not None else None


class DownloadManager:
    """Claims queued downloads, runs up to `concurrency` at once, persists their progress."""

    def __init__(
        self,
        *,
        concurrency: int | None = None,
        poll_interval: float = 0.5,
        persist_interval: float = 1.0,
        chunk_size: int | None = None,
        metadata_attempts: int = 3,
    ) -> None:
        self.concurrency = max(1, concurrency or int(getattr(settings, "MLXM_DOWNLOAD_CONCURRENCY", 2)))
        self.poll_interval = poll_interval
        self.persist_interval = persist_interval
        self.chunk_size = chunk_size or int(getattr(settings, "MLXM_DOWNLOAD_CHUNK_BYTES", 1024 * 1024))
        self.metadata_attempts = metadata_attempts
        self.transfers: dict[int, Transfer] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_persist = 0.0
        self.conversions = ConversionRunner()

    def start(self) -> None:
        # http_get reads the body in chunks of this size: smaller than its 10 MB default so
        # that progress and pause stay responsive on slow links.
        hf_constants.DOWNLOAD_CHUNK_SIZE = self.chunk_size
        self._recover()
        self.conversions.recover()
        self._thread = threading.Thread(target=self._loop, name="downloads-control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop all transfers, keeping them "running" in the database so the next start resumes them."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for transfer in self.transfers.values():
            transfer.request_stop(STOP_SHUTDOWN)
        deadline = time.monotonic() + timeout
        for transfer in self.transfers.values():
            transfer.thread.join(max(0.0, deadline - time.monotonic()))
        self.transfers.clear()
        self.conversions.stop()
        close_old_connections()

    def _recover(self) -> None:
        now = timezone.now()
        # Running when the previous worker stopped or died: queue them again (claims go by age,
        # so they come before newer requests) and they continue from their partial files.
        resumed = _update(
            Download.objects.filter(status=Status.RUNNING), status=Status.QUEUED, speed=0, updated_at=now
        )
        if resumed:
            log.info("resuming %d interrupted download(s)", resumed)
        # Cancelled while no worker ran: their partial files are still on disk.
        for local_dir in Download.objects.filter(status=Status.CANCELLED).values_list("local_dir", flat=True):
            path = Path(local_dir)
            if (path / storage.PARTIAL_DIR).exists() and storage.is_inside(path, storage.models_dir()):
                storage.remove_tree(path, within=storage.models_dir())

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self.tick()
                except Exception:
                    log.exception("download manager tick failed")
                    close_old_connections()
                self._stopping.wait(self.poll_interval)
        finally:
            connection.close()

    def tick(self) -> None:
        """One control step: heartbeat, obey status changes, persist progress, claim work."""
        self._heartbeat()
        for pk, transfer in list(self.transfers.items()):
            if not transfer.alive and transfer.thread.ident is not None:
                del self.transfers[pk]
        if self.transfers:
            statuses = dict(Download.objects.filter(pk__in=list(self.transfers)).values_list("id", "status"))
            for pk, transfer in self.transfers.items():
                status = statuses.get(pk)
                if status is None:
                    transfer.request_stop(STOP_CANCELLED)  # the row was deleted
                elif status != Status.RUNNING:
                    transfer.request_stop(_STOP_FOR_STATUS.get(status, STOP_REQUEUED))
            now = time.monotonic()
            if now - self._last_persist >= self.persist_interval:
                self._last_persist = now
                for pk, transfer in self.transfers.items():
                    if transfer.alive and statuses.get(pk) == Status.RUNNING:
                        fields = transfer.progress_fields()
                        _update(Download.objects.filter(pk=pk, status=Status.RUNNING), **fields)
        self._claim()
        self.conversions.tick()

    def _claim(self) -> None:
        free = self.concurrency - len(self.transfers)
        if free <= 0 or self._stopping.is_set():
            return
        candidates = list(
            Download.objects.filter(status=Status.QUEUED)
            .exclude(pk__in=list(self.transfers))
            .order_by("created_at", "id")
            .values_list("id", flat=True)[:free]
        )
        for pk in candidates:
            now = timezone.now()
            claimed = _update(
                Download.objects.filter(pk=pk, status=Status.QUEUED),
                status=Status.RUNNING,
                started_at=now,
                updated_at=now,
                error="",
                speed=0,
            )
            if not claimed:
                continue  # paused or cancelled meanwhile
            download = Download.objects.get(pk=pk)
            transfer = Transfer(download, metadata_attempts=self.metadata_attempts)
            self.transfers[pk] = transfer
            _update(
                Download.objects.filter(pk=pk), bytes_done=transfer.bytes_done, files=transfer.files_json()
            )
            log.info("downloading %s (%d files)", download.repo_id, len(download.files))
            transfer.start()

    def _heartbeat(self) -> None:
        path = selectors.heartbeat_path()
        try:
            path.touch()
        except OSError as exc:
            log.warning("cannot write the download heartbeat %s: %s", path, exc)
