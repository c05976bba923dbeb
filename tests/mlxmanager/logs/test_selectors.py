"""Reading the log files back: only their end, a record with its traceback, filters."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mlxmanager.errors import DomainError
from mlxmanager.logs import selectors
from tests.mlxmanager.logs.conftest import WriteLog, boom


def test_records_from_every_file_newest_first_with_their_tracebacks(write_log: WriteLog) -> None:
    write_log("web", logging.INFO, "GET /v1/models", request_id="rid-1")
    write_log("worker", logging.ERROR, "loading tiny failed", exc=boom())
    write_log("downloads", logging.WARNING, "the hub is slow")
    found = selectors.records()
    assert [r.process for r in found] == ["downloads", "worker", "web"]
    error = found[1]
    assert error.level == "ERROR" and error.message == "loading tiny failed"
    assert error.detail[0] == "Traceback (most recent call last):"
    assert error.detail[-1] == "ValueError: the weights are not where the profile says"
    assert error.text.splitlines()[0] == error.line and len(error.text.splitlines()) == 1 + len(error.detail)
    assert found[2].request_id == "rid-1"
    assert selectors.processes() == ["web", "worker", "downloads"]


def test_filters(write_log: WriteLog) -> None:
    write_log("web", logging.DEBUG, "debug line")
    write_log("web", logging.INFO, "for rid-a", request_id="rid-a")
    write_log("web", logging.ERROR, "failed rid-b", request_id="rid-b")
    write_log("worker", logging.CRITICAL, "worker is gone")
    msgs = lambda **kw: [r.message for r in selectors.records(selectors.LogFilter(**kw))]  # noqa: E731
    assert msgs(process="worker") == ["worker is gone"]
    assert msgs(level="ERROR") == ["worker is gone", "failed rid-b"]
    assert msgs(level="INFO", process="web") == ["failed rid-b", "for rid-a"]
    assert msgs(request_id="rid-a") == ["for rid-a"]
    assert msgs(request_id="rid-") == ["failed rid-b", "for rid-a"]  # part of an id
    assert len(msgs()) == 4
    assert [r.message for r in selectors.recent_errors()] == ["worker is gone", "failed rid-b"]
    assert [r.message for r in selectors.records(limit=2)] == ["worker is gone", "failed rid-b"]


def test_parse_filter_refuses_what_it_cannot_mean(write_log: WriteLog) -> None:
    write_log("web", logging.INFO, "x")
    assert selectors.parse_filter({"process": "web", "level": "warning", "request_id": " r1 "}) == (
        selectors.LogFilter(process="web", level="WARNING", request_id="r1")
    )
    for bad in ({"process": "nope"}, {"level": "LOUD"}, {"request_id": "x" * 129}):
        with pytest.raises(DomainError):
            selectors.parse_filter(bad)


def test_only_the_end_of_a_big_file_is_read(log_dir: Path, write_log: WriteLog) -> None:
    write_log("web", logging.INFO, "first")
    path = log_dir / "web.log"
    line = path.read_text()
    with path.open("a") as fh:
        fh.write(line * 50_000)  # ~5 MB
    write_log("web", logging.ERROR, "last", exc=boom())
    lines = selectors.tail_lines(path, 64 * 1024)
    assert sum(len(x) + 1 for x in lines) <= 64 * 1024
    assert lines[0] == line.rstrip("\n")  # the cut line at the start is dropped
    found = selectors.records(tail_bytes=64 * 1024)
    assert found[0].message == "last" and found[0].detail[-1].startswith("ValueError")
    assert len(selectors.last_lines(path, 500)) == 500


def test_continuation_lines_without_their_start_are_dropped() -> None:
    lines = [
        '  File "x.py", line 1, in <module>',  # the record's first line was cut off
        "ValueError: x",
        "2025-01-31 12:00:00,123 ERROR worker[7] inference.worker.server [-]: it broke",
        "Traceback (most recent call last):",
        "RuntimeError: y",
        '{"time": "2025-01-31T12:00:01.000+00:00", "level": "INFO", "process": "worker", "pid": 7, '
        '"logger": "l", "request_id": "r9", "message": "json line"}',
        "not a record",
    ]
    first, second = selectors.parse(lines, "worker")
    assert first.message == "it broke" and first.detail == [
        "Traceback (most recent call last):",
        "RuntimeError: y",
    ]
    assert first.time is not None and first.time.isoformat() == "2025-01-31T12:00:00.123000+00:00"
    assert second.request_id == "r9" and second.detail == ["not a record"]


def test_signature_changes_when_a_file_is_written(write_log: WriteLog) -> None:
    write_log("web", logging.INFO, "one")
    before = selectors.signature()
    write_log("web", logging.INFO, "two")
    assert selectors.signature() != before


def test_no_log_folder_no_records(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.MLXM_LOG_DIR = tmp_path / "missing"
    assert selectors.records() == [] and selectors.processes() == []
