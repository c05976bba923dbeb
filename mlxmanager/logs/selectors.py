"""Reads of the log files under `<data dir>/logs/` (written by inference/logsetup.py): the tail of
each file, parsed back into records, filtered by process, level and request id.

Only the end of a file is read (seek from the end; the previous rotation's file too when the
current one is short). A record is its first line and the lines after it that don't start a
record: a traceback stays with the error it belongs to. Plain and JSON lines both parse.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from inference import logsetup
from mlxmanager.errors import DomainError

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TAIL_BYTES = 512 * 1024  # read at most this much of the end of each file
PAGE_RECORDS = 300  # records shown on the page
MAX_REQUEST_ID = 128
# logsetup.PLAIN: "2025-01-31 12:00:00,123 INFO web[4242] django.request [3f2a…]: message"
_PLAIN = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>[A-Z]+) (?P<process>[A-Za-z0-9._-]+)"
    r"\[(?P<pid>\d+)\] (?P<logger>\S+) \[(?P<rid>[^\]]*)\]: (?P<message>.*)"
)


@dataclass
class Record:
    process: str  # the file's process: web, web-8001, worker, downloads
    time: datetime | None
    level: str
    pid: str
    logger: str
    request_id: str
    message: str
    detail: list[str] = field(default_factory=list)  # continuation lines: a traceback
    line: str = ""  # the first line as written

    @property
    def levelno(self) -> int:
        value = logging.getLevelName(self.level)
        return value if isinstance(value, int) else logging.INFO

    @property
    def traceback(self) -> str:
        return "\n".join(self.detail)

    @property
    def text(self) -> str:
        """The record as written: its first line and any continuation lines."""
        return "\n".join([self.line, *self.detail])

    @property
    def sort_key(self) -> float:
        return self.time.timestamp() if self.time else 0.0


@dataclass(frozen=True)
class LogFilter:
    process: str = ""  # one file's process, or every file
    level: str = ""  # this level and above
    request_id: str = ""  # records whose request id contains this

    def query(self) -> dict[str, str]:
        return {k: v for k, v in (("process", self.process), ("level", self.level),
                                  ("request_id", self.request_id)) if v}  # fmt: skip

    def matches(self, record: Record) -> bool:
        if self.level and record.levelno < logging.getLevelName(self.level):
            return False
        return not self.request_id or self.request_id in record.request_id


def log_dir() -> Path:
    return Path(settings.MLXM_LOG_DIR)


def log_files(base: Path | None = None) -> dict[str, Path]:
    """Each process's current file, by process name (web, worker, downloads, …)."""
    base = base or log_dir()
    try:
        paths = sorted(p for p in base.iterdir() if p.suffix == logsetup.SUFFIX and p.is_file())
    except FileNotFoundError:
        return {}
    order = {"web": 0, "worker": 1, "downloads": 2}
    paths.sort(key=lambda p: (order.get(p.stem.split("-")[0], 3), p.stem))
    return {p.stem: p for p in paths}


def processes() -> list[str]:
    return list(log_files())


def parse_filter(params: Mapping[str, str], known: list[str] | None = None) -> LogFilter:
    """The page's query (`process`, `level`, `request_id`); a DomainError names a bad value."""
    process = (params.get("process") or "").strip()
    level = (params.get("level") or "").strip().upper()
    rid = (params.get("request_id") or "").strip()
    if process and process not in (known if known is not None else processes()):
        raise DomainError(f"there is no log file for the process '{process}'", param="process")
    if level and level not in LEVELS:
        raise DomainError(f"the level is one of {', '.join(LEVELS)}", param="level")
    if len(rid) > MAX_REQUEST_ID:
        raise DomainError(f"a request id has at most {MAX_REQUEST_ID} characters", param="request_id")
    return LogFilter(process=process, level=level, request_id=rid)


def _read_end(path: Path, nbytes: int) -> tuple[bytes, bool]:
    """The last `nbytes` of a file (and whether that is all of it)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            start = max(0, size - nbytes)
            fh.seek(start)
            return fh.read(nbytes), start == 0
    except FileNotFoundError:
        return b"", True


def tail_lines(path: Path, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The complete lines at the end of `path` within `max_bytes`; when the file is shorter
    (just rotated), the end of its previous file (`.1`) comes first."""
    data, whole = _read_end(path, max_bytes)
    if whole and len(data) < max_bytes:
        older, older_whole = _read_end(path.with_name(path.name + ".1"), max_bytes - len(data))
        if older and not older.endswith(b"\n"):
            older += b"\n"
        data, whole = older + data, older_whole
    if not whole:
        data = data.partition(b"\n")[2]  # the first line is cut
    return data.decode("utf-8", errors="replace").splitlines()


def _time(value: str, *, plain: bool) -> datetime | None:
    try:
        if plain:
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        return None


def _start(line: str, process: str) -> Record | None:
    """The record `line` starts, or None for a continuation line."""
    if line.startswith("{"):
        try:
            body = json.loads(line)
        except ValueError:
            return None
        if not isinstance(body, dict) or "level" not in body or "message" not in body:
            return None
        exc = str(body.get("exc_info") or body.get("stack_info") or "")
        return Record(
            process=process,
            time=_time(str(body.get("time", "")), plain=False),
            level=str(body.get("level", "INFO")).upper(),
            pid=str(body.get("pid", "")),
            logger=str(body.get("logger", "")),
            request_id=str(body.get("request_id") or "-"),
            message=str(body["message"]),
            detail=exc.splitlines() if exc else [],
            line=line,
        )
    m = _PLAIN.fullmatch(line)
    if m is None or m["level"] not in LEVELS:
        return None
    return Record(
        process=process,
        time=_time(m["time"], plain=True),
        level=m["level"],
        pid=m["pid"],
        logger=m["logger"],
        request_id=m["rid"] or "-",
        message=m["message"],
        line=line,
    )


def parse(lines: list[str], process: str) -> list[Record]:
    """Records from lines; continuation lines join the record before them (those before the
    first record, whose start was cut off, are dropped)."""
    records: list[Record] = []
    for line in lines:
        record = _start(line, process)
        if record is not None:
            records.append(record)
        elif records and line.strip():
            records[-1].detail.append(line)
    return records


def file_records(process: str, path: Path, *, tail_bytes: int = TAIL_BYTES) -> list[Record]:
    return parse(tail_lines(path, tail_bytes), process)


def records(
    filters: LogFilter = LogFilter(), *, limit: int = PAGE_RECORDS, tail_bytes: int = TAIL_BYTES
) -> list[Record]:
    """The newest `limit` records that match, newest first, from every file (or the one chosen)."""
    found: list[Record] = []
    for process, path in log_files().items():
        if filters.process and process != filters.process:
            continue
        found.extend(r for r in file_records(process, path, tail_bytes=tail_bytes) if filters.matches(r))
    found.sort(key=lambda r: r.sort_key)  # stable: a file's own order holds for equal times
    return found[-limit:][::-1] if limit else []


def recent_errors(limit: int = 50, *, tail_bytes: int = TAIL_BYTES) -> list[Record]:
    """The last `limit` ERROR (and CRITICAL) records of every file, newest first."""
    return records(LogFilter(level="ERROR"), limit=limit, tail_bytes=tail_bytes)


def last_lines(path: Path, count: int = 500, *, max_bytes: int = 4 * 1024 * 1024) -> list[str]:
    """The last `count` lines of one file (read from its end, at most `max_bytes`)."""
    data, whole = _read_end(path, max_bytes)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not whole and lines:
        lines = lines[1:]
    return lines[-count:]


def signature() -> tuple[tuple[str, int, int], ...]:
    """Changes whenever a file is written or rotated: the live tail re-renders then."""
    out = []
    for process, path in log_files().items():
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        out.append((process, st.st_size, st.st_mtime_ns))
    return tuple(out)
