"""Conversions: a transformers checkpoint → an MLX model, by `mlx_lm.convert` in a child process.

The downloader owns them (`ConversionRunner.tick()` runs in its control loop): one at a
time, since a conversion holds the whole model in memory. The child writes into a scratch
folder that is moved into the models folder only when it succeeded, so a failed, cancelled
or interrupted conversion never leaves a half-written model behind. Progress is the stage
mlx_lm prints (loading, casting, quantizing, saving) plus the bytes written so far.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from mlxmanager.downloads import storage
from mlxmanager.downloads.models import Conversion

log = logging.getLogger(__name__)
Status = Conversion.Status

# What mlx_lm.convert prints, in order, and how far along that stage is.
STAGES = (
    ("[INFO] Loading", "loading the checkpoint", 10),
    ("[INFO] Using dtype", "casting the weights", 30),
    ("[INFO] Quantizing", "quantizing", 50),
    ("[INFO] Dequantizing", "dequantizing", 50),
)
SAVING = ("saving the MLX model", 80)


def scratch_dir(conversion_id: int) -> Path:
    return Path(settings.MLXM_DATA_DIR) / "conversions" / str(conversion_id)


def command(conversion: Conversion, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", conversion.source, "--mlx-path", str(out)]
    if conversion.q_bits:
        cmd += ["-q", "--q-bits", str(conversion.q_bits), "--q-group-size", str(conversion.q_group_size)]
    if conversion.dtype:
        cmd += ["--dtype", conversion.dtype]
    return cmd


def _update(queryset: QuerySet[Conversion], **fields: object) -> int:
    return queryset.update(updated_at=timezone.now(), **fields)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


class _Job:
    def __init__(self, conversion: Conversion) -> None:
        self.id = conversion.pk
        self.output = Path(conversion.output_dir)
        self.scratch = scratch_dir(conversion.pk)
        self.cleanup()
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.out = self.scratch / "model"
        self.stage, self.percent = "starting", 5
        self.tail: deque[str] = deque(maxlen=12)
        self.proc = subprocess.Popen(
            command(conversion, self.out),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.scratch,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, name=f"convert-{self.id}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            self.tail.append(line[:300])
            for marker, stage, percent in STAGES:
                if line.startswith(marker):
                    self.stage, self.percent = stage, percent

    def progress(self) -> tuple[str, int]:
        written = _size(self.out)
        if written and self.percent < SAVING[1]:
            return f"{SAVING[0]} ({written:,} bytes written)", SAVING[1]
        return self.stage, self.percent

    def error_message(self) -> str:
        lines = [ln for ln in self.tail if not ln.startswith("[INFO]")]
        last = next(
            (ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else ""
        )
        return f"mlx_lm.convert failed (exit {self.proc.returncode}): {last or 'no output'}"[:1000]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(5)

    def cleanup(self) -> None:
        if self.scratch.exists():
            storage.remove_tree(self.scratch, within=self.scratch.parent)


class ConversionRunner:
    """Claims queued conversions one at a time and follows them to the end."""

    def __init__(self) -> None:
        self.job: _Job | None = None

    def recover(self) -> None:
        """Conversions running when the worker stopped start again from scratch."""
        n = _update(
            Conversion.objects.filter(status=Status.RUNNING), status=Status.QUEUED, stage="", percent=0
        )
        if n:
            log.info("restarting %d interrupted conversion(s)", n)

    def stop(self) -> None:
        """Worker shutdown: kill the child; the conversion stays running, so it restarts."""
        if self.job is not None:
            self.job.kill()
            self.job.cleanup()
            self.job = None

    def tick(self) -> None:
        if self.job is not None:
            self._follow(self.job)
        if self.job is None:
            self._claim()

    def _follow(self, job: _Job) -> None:
        status = Conversion.objects.filter(pk=job.id).values_list("status", flat=True).first()
        if status != Status.RUNNING:  # cancelled (or deleted) from the web
            job.kill()
            job.cleanup()
            self.job = None
            return
        if job.proc.poll() is None:
            stage, percent = job.progress()
            _update(Conversion.objects.filter(pk=job.id, status=Status.RUNNING), stage=stage, percent=percent)
            return
        job.reader.join(5)
        self.job = None
        now = timezone.now()
        if job.proc.returncode == 0 and (job.out / "config.json").exists():
            if job.output.exists():
                error = f"{job.output} appeared while converting; the result was discarded"
                _update(
                    Conversion.objects.filter(pk=job.id), status=Status.FAILED, error=error, finished_at=now
                )
            else:
                job.output.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(job.out), str(job.output))
                _update(
                    Conversion.objects.filter(pk=job.id),
                    status=Status.COMPLETED,
                    stage="done",
                    percent=100,
                    finished_at=now,
                )
                log.info("converted %s", job.output)
        else:
            _update(
                Conversion.objects.filter(pk=job.id),
                status=Status.FAILED,
                error=job.error_message(),
                finished_at=now,
            )
        job.cleanup()

    def _claim(self) -> None:
        pk = (
            Conversion.objects.filter(status=Status.QUEUED)
            .order_by("created_at", "id")
            .values_list("id", flat=True)
            .first()
        )
        if pk is None:
            return
        now = timezone.now()
        if not _update(
            Conversion.objects.filter(pk=pk, status=Status.QUEUED),
            status=Status.RUNNING,
            started_at=now,
            error="",
            stage="starting",
            percent=5,
        ):
            return
        conversion = Conversion.objects.get(pk=pk)
        try:
            self.job = _Job(conversion)
        except OSError as exc:
            _update(
                Conversion.objects.filter(pk=pk),
                status=Status.FAILED,
                error=f"cannot start: {exc}",
                finished_at=now,
            )
            return
        log.info("converting %s → %s", conversion.source, conversion.output_dir)
