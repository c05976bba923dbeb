from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from mlxmanager.audit.models import LoggedModel


class Download(models.Model):
    """One model repo being fetched into MLXM_MODELS_DIR/<org>--<name>.

    The downloader owns the transfer; the web process only changes `status`
    (pause, resume, cancel) and reads the progress the downloader persists every second.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Downloading"
        PAUSED = "paused", "Paused"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    # States a resume (or a new request for the same repo) may restart from.
    RESUMABLE = (Status.PAUSED, Status.FAILED, Status.CANCELLED)
    FINISHED = (Status.COMPLETED, Status.CANCELLED)

    repo_id = models.CharField(max_length=200)
    revision = models.CharField(max_length=200, default="main")
    commit = models.CharField(max_length=64, blank=True, help_text="The commit the files are pinned to.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    # [{"name": str, "size": int, "sha256": str | None, "done": int}]
    files = models.JSONField(default=list, blank=True)
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    speed = models.FloatField(default=0, help_text="Bytes per second, averaged over the last seconds.")
    current_file = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    local_dir = models.CharField(max_length=500, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.repo_id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def percent(self) -> float:
        if self.bytes_total <= 0:
            return 100.0 if self.status == self.Status.COMPLETED else 0.0
        return min(100.0, 100.0 * self.bytes_done / self.bytes_total)

    @property
    def eta(self) -> timedelta | None:
        if self.status != self.Status.RUNNING or self.speed <= 0:
            return None
        return timedelta(seconds=max(0, self.bytes_total - self.bytes_done) / self.speed)

    @property
    def files_done(self) -> int:
        return sum(1 for f in self.files if f.get("done", 0) >= f.get("size", 0))


class HubToken(LoggedModel):
    """The Hugging Face token for gated and private models: one row, stored only as a JWE.

    It wins over `HF_TOKEN` in the environment; removing it falls back to the environment.
    """

    secret_jwe = models.TextField(editable=False, help_text="The token, encrypted (compact JWE).")
    key_id = models.CharField(max_length=32, editable=False, help_text="Which encryption key sealed it.")
    hint = models.CharField(max_length=8, help_text="The token's last characters, to recognise it.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "Hugging Face token"

    def __str__(self) -> str:
        return f"Hugging Face token …{self.hint}"


class Conversion(LoggedModel):
    """A transformers checkpoint converted to MLX (optionally quantized) by `mlx_lm.convert`.

    The downloader runs it in a child process; the web process only queues and cancels.
    The result appears in MLXM_MODELS_DIR/<name> once complete (never half-written).
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Converting"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    source = models.CharField(max_length=500, help_text="The checkpoint folder (config.json + safetensors).")
    name = models.CharField(max_length=100, help_text="The output folder's name in the models folder.")
    output_dir = models.CharField(max_length=500)
    q_bits = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Quantize to this many bits.")
    q_group_size = models.PositiveSmallIntegerField(default=64)
    dtype = models.CharField(
        max_length=16, blank=True, help_text="float16, bfloat16 or float32; blank: keep."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    stage = models.CharField(max_length=100, blank=True)
    percent = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"convert {self.source} → {self.name} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def recipe(self) -> str:
        parts = [f"{self.q_bits}-bit, group size {self.q_group_size}" if self.q_bits else "not quantized"]
        if self.dtype:
            parts.append(self.dtype)
        return ", ".join(parts)
