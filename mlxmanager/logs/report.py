"""The debug report: one .zip an admin can attach to a bug report (the Logs page's button and
`manage.py debug_report`), with every secret taken out.

What it holds: versions (the web side's packages here; Python, MLX and its backend from the
worker's own health reply, since only the worker imports MLX), the platform and memory, the
effective settings and MLXM_* environment (redacted), /healthz's details, the pool, the recent
errors and the last lines of each log file. A worker that is down is said so; the report is made
all the same.

Redaction, in layers: settings and variables whose names look secret (*SECRET*, *TOKEN*, *KEY*,
*PASSWORD*, …) and CACHES are replaced whole; passwords in URLs are cut out; values that look
like generated secrets are dropped; and every file's text is finally scrubbed of each secret
this process knows (SECRET_KEY, the metrics token, the worker secret, the Hugging Face token,
the cloud credentials, the credentials keyring, database and Redis passwords) and of anything
shaped like an API key or a bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import platform
import re
import shutil
import sys
import zipfile
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from asgiref.sync import sync_to_async
from django.conf import settings

from mlxmanager.logs import selectors

REDACTED = "[redacted]"
LOG_LINES = 500  # the last lines of each log file
ERRORS = 50  # the recent ERROR records
HEALTH_TIMEOUT_S = 3.0
PACKAGES = (
    "mlx-manager", "django", "django-ninja", "channels", "channels-redis", "daphne", "uvicorn",
    "httptools", "uvloop", "whitenoise", "django-htmx", "django-template-partials", "msgspec",
    "httpx", "huggingface-hub", "joserfc", "argon2-cffi", "dj-database-url", "psycopg",
    "mlx", "mlx-metal", "mlx-cuda", "mlx-cpu", "mlx-lm", "mlx-vlm", "mlx-audio", "mlx-embeddings",
    "transformers", "tokenizers", "numpy",
)  # fmt: skip
SECRET_NAME = re.compile(r"SECRET|TOKEN|KEY|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE", re.I)
# …except where the name says the value is where a secret lives or a number about one.
NOT_SECRET = re.compile(r"_(FILE|DIR|PATH|SECONDS|BYTES|TTL)$", re.I)
SAFE_SETTINGS = {"AUTH_PASSWORD_VALIDATORS", "PASSWORD_HASHERS", "PASSWORD_RESET_TIMEOUT"}
# Settings that are entirely left out (they may hold connection strings with credentials).
WITHHELD = {"CACHES"}
ENV_PREFIXES = ("MLXM_", "HF_", "HUGGINGFACE_", "DJANGO_", "MLX_")
ENV_NAMES = {"DATABASE_URL", "REDIS_URL", "TZ", "LANG"}
# Shapes of secrets that may turn up in a log line: our API keys, Hugging Face and OpenAI-style
# keys, bearer tokens and passwords in URLs.
_PATTERNS = [
    (re.compile(r"mlxm-[A-Za-z0-9_\-]{8,}"), "mlxm-" + REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "hf_" + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), "sk-" + REDACTED),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 " + REDACTED),
    (re.compile(r"(?i)\b(x-api-key|api[_-]?key|token|secret|password)([\"']?\s*[:=]\s*[\"']?)[^\s\"',&]{6,}"),
     r"\1\2" + REDACTED),
    (re.compile(r"(\w+://)([^/@\s:]+):([^/@\s]+)@"), r"\1\2:" + REDACTED + "@"),
]  # fmt: skip
_GENERATED = re.compile(r"[A-Za-z0-9_\-+/=]{16,}")
MIN_SECRET = 6  # shorter known values are not searched for (too likely to match by chance)


# ---- redaction --------------------------------------------------------------------------


def secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not NOT_SECRET.search(name) and name not in SAFE_SETTINGS


def looks_secret(value: str) -> bool:
    """A generated token rather than a word, number, path, host list or URL: 16+ characters of
    the base64/hex alphabet, letters and digits mixed, and not too repetitive."""
    return bool(
        _GENERATED.fullmatch(value)
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and len(set(value)) >= 10
    )


def strip_url_password(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if not parts.scheme or not parts.netloc or parts.password is None:
        return value
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{REDACTED}@{host}"))


def _plain(value: Any) -> Any:
    """JSON-safe: containers kept, paths and other objects as text, bytes never shown."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray):
        return REDACTED if value else ""
    return str(value)


def redact(value: Any, name: str = "") -> Any:
    """`value` (a setting or a part of one, under `name`) with secrets replaced."""
    if (
        name
        and secret_name(name)
        and value not in (None, "", b"")
        and not isinstance(value, bool | int | float)
    ):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return strip_url_password(value)
    return value


def effective_settings() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(dir(settings)):
        if not name.isupper():
            continue
        if name in WITHHELD:
            out[name] = REDACTED
            continue
        out[name] = redact(_plain(getattr(settings, name)), name)
    return out


def environment() -> dict[str, str]:
    out = {}
    for name, value in sorted(os.environ.items()):
        if not (name.startswith(ENV_PREFIXES) or name in ENV_NAMES):
            continue
        if secret_name(name) or looks_secret(value):
            out[name] = REDACTED if value else ""
        else:
            out[name] = strip_url_password(value)
    return out


def _url_password(url: str) -> str | None:
    with contextlib.suppress(ValueError):
        return urlsplit(url).password
    return None


def known_secrets() -> set[str]:
    """Every secret this process can name, to scrub from the report's text (logs included)."""
    found: set[Any] = {settings.SECRET_KEY, getattr(settings, "MLXM_METRICS_TOKEN", ""),
                       getattr(settings, "MLXM_HF_TOKEN", "")}  # fmt: skip
    found.update(getattr(settings, "SECRET_KEY_FALLBACKS", []) or [])
    worker_secret = getattr(settings, "MLXM_WORKER_SECRET", None)
    if worker_secret:
        found.add(
            worker_secret.decode(errors="replace") if isinstance(worker_secret, bytes) else worker_secret
        )
    for name, value in os.environ.items():
        if value and (secret_name(name) or looks_secret(value)):
            found.update([value, *value.split(",")])
        if "://" in value:
            found.add(_url_password(value))
    for db in settings.DATABASES.values():
        found.add(db.get("PASSWORD"))
    found.update(_stored_secrets())
    return {str(s).strip() for s in found if s and len(str(s).strip()) >= MIN_SECRET}


def _stored_secrets() -> Iterable[str]:
    """The secrets kept encrypted in the database and the keys that seal them."""
    from mlxmanager.credentials import crypto
    from mlxmanager.credentials.models import Credential
    from mlxmanager.downloads import hub

    out: list[str] = []
    with contextlib.suppress(Exception):
        key_file = crypto.key_file()
        if key_file.exists():
            out.extend(line.strip() for line in key_file.read_text().splitlines())
    with contextlib.suppress(Exception):  # a database that can't be read has none to give
        for jwe in Credential.objects.values_list("secret_jwe", flat=True):
            with contextlib.suppress(Exception):
                out.append(crypto.decrypt(jwe))
    with contextlib.suppress(Exception):
        out.append(hub.stored_token() or "")
    return out


class Scrubber:
    """Takes known secrets and secret-shaped strings out of text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted(set(secrets), key=len, reverse=True)  # longest first: no half-scrubs

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


# ---- what goes in -------------------------------------------------------------------------


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def web_versions() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _meminfo() -> dict[str, int]:
    """Linux's /proc/meminfo (MemTotal, MemAvailable) in bytes; empty elsewhere."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def platform_info() -> dict[str, Any]:
    total = 0
    with contextlib.suppress(ValueError, OSError, AttributeError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    disk: dict[str, int] = {}
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(settings.MLXM_DATA_DIR)
        disk = {"total_bytes": usage.total, "free_bytes": usage.free}
    load = None
    with contextlib.suppress(OSError, AttributeError):
        load = list(os.getloadavg())
    return {
        "system": platform.system(),
        "release": platform.release(),
        "version": platform.version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "memory": {"total_bytes": total, **_meminfo()},
        "data_dir_disk": disk,
        "memory_limit_bytes": getattr(settings, "MLXM_MEMORY_LIMIT_BYTES", None),
    }


def _failure(exc: BaseException) -> str:
    return f"could not be read: {type(exc).__name__}: {exc}"


async def _health() -> dict[str, Any]:
    from inference.views import health_details

    try:
        _, body = await asyncio.wait_for(health_details(), HEALTH_TIMEOUT_S + 1)
    except Exception as exc:  # a report is wanted most when things are broken
        detail = "no health answer in time" if isinstance(exc, TimeoutError) else _failure(exc)
        body = {"status": "degraded", "web": {"state": "up"}, "worker": {"state": "down", "detail": detail}}
    return body


async def _pool() -> dict[str, Any]:
    from mlxmanager.pool.selectors import pool_state

    try:
        state = await asyncio.wait_for(pool_state(), HEALTH_TIMEOUT_S + 1)
    except Exception as exc:
        return {"error": "no answer in time" if isinstance(exc, TimeoutError) else _failure(exc)}
    return {
        "worker": "up" if state.up else "down",
        "detail": state.detail,
        "used_bytes": state.used_bytes,
        "limit_bytes": state.limit_bytes,
        "evictions": state.evictions,
        "queue_depth": state.queue_depth,
        "loading": state.loading,
        "loaded": [m.as_dict() for m in state.loaded],
        "available_profiles": [pr.name for pr in state.available],
    }


def _logs() -> tuple[str, dict[str, list[str]]]:
    errors = selectors.recent_errors(ERRORS)
    lines = [f"The last {len(errors)} ERROR records of every log file, newest first.", ""]
    for record in errors:
        lines += [f"== {record.process}", record.text, ""]
    tails = {
        process: selectors.last_lines(path, LOG_LINES) for process, path in selectors.log_files().items()
    }
    return "\n".join(lines), tails


def _summary(health: dict[str, Any], now: datetime, files: list[str]) -> str:
    worker = health.get("worker", {})
    about = worker.get("about") or {}
    state = worker.get("state", "down")
    if state == "up":
        worker_line = (f"up (pid {worker.get('pid')}): Python {about.get('python', '?')}, "
                       f"MLX {about.get('mlx', '?')} on {about.get('backend', '?')}")  # fmt: skip
    else:
        worker_line = (
            f"DOWN: {worker.get('detail', 'no answer')}. Its versions are unknown; its log is below."
        )
    return "\n".join([
        "MLX Manager debug report",
        f"Made {now.isoformat(timespec='seconds')}.",
        "",
        f"Web process: Python {platform.python_version()}, MLX Manager {_version('mlx-manager') or '?'}, "
        f"Django {_version('django') or '?'}",
        f"Worker: {worker_line}",
        "",
        "Files:",
        *(f"  {name}" for name in files),
        "",
        "Secrets are taken out: settings and variables named like secrets, passwords in URLs,",
        "known secrets and API keys or tokens wherever they appeared (log lines included).",
        "",
    ])  # fmt: skip


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"


def _json(make: Any) -> str:
    """One file of the report: what `make()` returns, or why it could not be made."""
    try:
        return _dump(make())
    except Exception as exc:
        return _dump({"error": _failure(exc)})


async def build(*, now: datetime | None = None) -> tuple[str, bytes]:
    """(file name, zip bytes). Works with the worker down; reads no more than the end of logs."""
    now = now or datetime.now(UTC)
    health, pool = await asyncio.gather(_health(), _pool())

    worker = health.get("worker", {})

    def gather() -> tuple[dict[str, str], Scrubber]:
        try:
            errors, tails = _logs()
        except Exception as exc:
            errors, tails = f"The log files {_failure(exc)}\n", {}
        files = {
            "versions.json": _json(lambda: {"web": web_versions(), "worker": worker.get("about")
                                            or {"state": "down", "detail": worker.get("detail", "")}}),
            "platform.json": _json(platform_info),
            "settings.json": _json(effective_settings),
            "environment.json": _json(environment),
            "healthz.json": _dump(health),
            "pool.json": _dump(pool),
            "errors.txt": errors,
            **{f"logs/{process}.log": "\n".join(lines) + "\n" for process, lines in tails.items()},
        }  # fmt: skip
        return files, Scrubber(known_secrets())

    files, scrub = await sync_to_async(gather, thread_sensitive=True)()
    files = {"README.txt": _summary(health, now, ["README.txt", *files]), **files}
    stamp = now.strftime("%Y%m%d-%H%M%S")
    folder = f"mlxmanager-debug-{stamp}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=now.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            zf.writestr(info, scrub(text))
    return f"{folder}.zip", buffer.getvalue()
