"""Log lines, one format in every process: the web server, the inference worker, the downloader.

Plain text by default, JSON lines with `MLXM_LOG_FORMAT=json`; each line names its process
and pid and carries the request id (`-` outside a request). Each process writes its own file
under `<data dir>/logs/` (`web.log`, `web-<port>.log`, `worker.log`, `downloads.log`), rotated
by size (`MLXM_LOG_MAX_BYTES`, `MLXM_LOG_BACKUPS`), as well as the console.

No Django here: the worker imports it (the web side reaches it through `settings.LOGGING`).
The files are 0600 like everything else in the data dir (the umask set by `env.data_dir()`).
"""

from __future__ import annotations

import json
import logging
import logging.config
import logging.handlers
import os
import re
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Which file a process writes (`manage.py serve` sets it for each child it starts).
PROCESS_ENV = "MLXM_LOG_PROCESS"
LOG_DIR_NAME = "logs"
SUFFIX = ".log"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
FORMATS = ("plain", "json")
# The plain line (its time in UTC); the Logs page (mlxmanager/logs/selectors.py) parses it back.
PLAIN = "%(asctime)s %(levelname)s {process}[%(process)d] %(name)s [%(request_id)s]: %(message)s"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def log_dir(base: Path) -> Path:
    """`<base>/logs`, created owner-only."""
    path = base / LOG_DIR_NAME
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def log_format() -> str:
    value = os.environ.get("MLXM_LOG_FORMAT", "plain").strip().lower()
    return value if value in FORMATS else "plain"


def log_level() -> str:
    return os.environ.get("MLXM_LOG_LEVEL", "INFO").strip().upper() or "INFO"


def max_bytes() -> int:
    return int(os.environ.get("MLXM_LOG_MAX_BYTES") or DEFAULT_MAX_BYTES)


def backups() -> int:
    return int(os.environ.get("MLXM_LOG_BACKUPS") or DEFAULT_BACKUPS)


def check_name(process: str) -> str:
    if not _NAME.fullmatch(process):
        raise ValueError(f"a log process name is letters, digits, '.', '_' and '-', not {process!r}")
    return process


def log_file(base: Path, process: str) -> Path:
    return log_dir(base) / (check_name(process) + SUFFIX)


def process_from_env() -> str:
    """This process's log file name from MLXM_LOG_PROCESS ('' when unset: console only)."""
    value = os.environ.get(PROCESS_ENV, "").strip()
    return check_name(value) if value else ""


class DefaultRequestId(logging.Filter):
    """Gives a record without a request id the `-` the format expects (the worker's records;
    the web side uses mlxmanager.request_ids.RequestIdFilter, which knows the current one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return True


class PlainFormatter(logging.Formatter):
    """The plain line, its time in UTC in every process (the web side runs on Django's UTC, the
    worker on the machine's zone otherwise), so lines from different files sort together."""

    converter = time.gmtime  # type: ignore[assignment]  # a builtin: not bound as a method


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, process, pid, logger, request_id,
    message and, for an exception, its traceback in `exc_info` (newlines escaped: one line)."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process_name = process

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": self.process_name,
            "pid": record.process,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exc_info"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            body["exc_info"] = record.exc_text
        if record.stack_info:
            body["stack_info"] = record.stack_info
        return json.dumps(body, ensure_ascii=False, default=str)


def formatter_config(process: str) -> dict[str, Any]:
    if log_format() == "json":
        return {"()": "inference.logsetup.JsonFormatter", "process": process}
    return {"()": "inference.logsetup.PlainFormatter", "fmt": PLAIN.format(process=process)}


def make_formatter(process: str) -> logging.Formatter:
    """The formatter `formatter_config` describes, made here."""
    if log_format() == "json":
        return JsonFormatter(process)
    return PlainFormatter(PLAIN.format(process=process))


def logging_config(
    process: str,
    *,
    base: Path | None,
    request_id_filter: str = "inference.logsetup.DefaultRequestId",
    label: str = "",
    console: bool = True,
) -> dict[str, Any]:
    """A `logging.config.dictConfig` for this process: the console, and `<base>/logs/<process>.log`
    when `process` and `base` are given. `label` names the process in lines (default `process`)."""
    label = label or process or "manage"
    filters = ["request_id"]
    handlers: dict[str, Any] = {}
    if console:
        handlers["console"] = {"class": "logging.StreamHandler", "formatter": "mlxm", "filters": filters}
    if process and base is not None:
        handlers["file"] = {
            "class": "logging.handlers.RotatingFileHandler",
            "filename": str(log_file(base, process)),
            "maxBytes": max_bytes(),
            "backupCount": backups(),
            "encoding": "utf-8",
            "formatter": "mlxm",
            "filters": filters,
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": request_id_filter}},
        "formatters": {"mlxm": formatter_config(label)},
        "handlers": handlers,
        "root": {"handlers": list(handlers), "level": log_level()},
    }


def configure(process: str, base: Path) -> Path:
    """Set up this process's logging (the worker's entry point): console and its file."""
    logging.config.dictConfig(logging_config(process, base=base))
    return log_file(base, process)


def add_file(process: str, base: Path, *, filters: list[logging.Filter] | None = None) -> Path:
    """Also write the root logger to `<base>/logs/<process>.log` (a management command that runs
    as its own process, like the downloader), unless a handler already writes that file."""
    path = log_file(base, process)
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path:
            return path
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=max_bytes(), backupCount=backups(), encoding="utf-8"
    )
    handler.setFormatter(make_formatter(process))
    for f in filters if filters is not None else [DefaultRequestId()]:
        handler.addFilter(f)
    root.addHandler(handler)
    return path
