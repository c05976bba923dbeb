"""One log format in every process, a file per process under <data dir>/logs/, rotated by size."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference import logsetup
from mlxmanager.logs import selectors
from tests.conftest import ROOT


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Tests configure the root logger as a process would; the test run's own comes back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


def _records(path: Path, process: str) -> list[selectors.Record]:
    return selectors.parse(path.read_text().splitlines(), process)


def test_a_process_writes_its_own_owner_only_file_in_the_plain_format(
    tmp_path: Path, restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLXM_LOG_FORMAT", raising=False)
    os.umask(0o077)  # as inference.env.data_dir() sets it in every process
    path = logsetup.configure("worker", tmp_path)
    assert path == tmp_path / "logs" / "worker.log"
    log = logging.getLogger("inference.worker.test")
    log.info("model %s loaded", "tiny")
    try:
        raise RuntimeError("the model exploded")
    except RuntimeError:
        log.exception("generation failed")
    for h in logging.getLogger().handlers:
        h.flush()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    lines = path.read_text().splitlines()
    assert lines[0].endswith(f" INFO worker[{os.getpid()}] inference.worker.test [-]: model tiny loaded")
    first, error = _records(path, "worker")
    assert (first.level, first.pid, first.request_id, first.message) == (
        "INFO",
        str(os.getpid()),
        "-",
        "model tiny loaded",
    )
    # The time is UTC in every process (the worker has no Django to set it).
    assert first.time is not None and abs(first.time.timestamp() - time.time()) < 60
    # The traceback's lines stay with their record.
    assert error.level == "ERROR" and error.message == "generation failed"
    assert error.detail[0] == "Traceback (most recent call last):"
    assert error.detail[-1] == "RuntimeError: the model exploded"


def test_json_lines(tmp_path: Path, restore_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXM_LOG_FORMAT", "json")
    path = logsetup.configure("downloads", tmp_path)
    log = logging.getLogger("mlxmanager.downloads.test")
    log.warning("slow hub: %d s", 12, extra={"request_id": "req-42"})
    try:
        {}["missing"]
    except KeyError:
        log.exception("tick failed")
    for h in logging.getLogger().handlers:
        h.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # the traceback is inside its line
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["message"] == "slow hub: 12 s"
    assert first["process"] == "downloads" and first["pid"] == os.getpid()
    assert first["request_id"] == "req-42" and first["logger"] == "mlxmanager.downloads.test"
    assert first["time"].endswith("+00:00")
    assert second["request_id"] == "-" and "KeyError: 'missing'" in second["exc_info"]
    warning, error = _records(path, "downloads")
    assert warning.request_id == "req-42" and error.detail[-1] == "KeyError: 'missing'"


def test_files_rotate_by_size(tmp_path: Path, restore_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXM_LOG_MAX_BYTES", "2000")
    monkeypatch.setenv("MLXM_LOG_BACKUPS", "2")
    path = logsetup.configure("web", tmp_path)
    log = logging.getLogger("rotation")
    for i in range(200):
        log.warning("line %03d %s", i, "x" * 40)
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["web.log", "web.log.1", "web.log.2"]  # 2 backups, the oldest dropped
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in path.parent.iterdir())
    assert "line 199" in path.read_text()
    # Reading the tail of a file just rotated takes the end of the one before too.
    tail = selectors.tail_lines(path, 3000)
    assert "line 199" in tail[-1] and len(tail) > path.read_text().count("\n")


def test_add_file_is_idempotent_and_names_are_checked(tmp_path: Path, restore_logging: None) -> None:
    a = logsetup.add_file("downloads", tmp_path)
    b = logsetup.add_file("downloads", tmp_path)
    assert a == b
    assert (
        sum(
            isinstance(h, logging.FileHandler) and h.baseFilename == str(a)
            for h in logging.getLogger().handlers
        )
        == 1
    )
    with pytest.raises(ValueError):
        logsetup.log_file(tmp_path, "../escape")


def test_settings_log_to_a_file_only_when_a_process_is_named(tmp_path: Path) -> None:
    plain = logsetup.logging_config("", base=tmp_path)
    assert list(plain["handlers"]) == ["console"]
    web = logsetup.logging_config("web-8001", base=tmp_path, request_id_filter="x.Y")
    assert web["handlers"]["file"]["filename"] == str(tmp_path / "logs" / "web-8001.log")
    assert web["filters"]["request_id"] == {"()": "x.Y"}
    assert "web-8001[%(process)d]" in web["formatters"]["mlxm"]["fmt"]
    assert web["formatters"]["mlxm"]["()"] == "inference.logsetup.PlainFormatter"


def test_serve_names_the_web_log() -> None:
    from inference.management.commands.serve import web_log_name

    assert web_log_name(8000, with_worker=True) == "web"
    assert web_log_name(8002, with_worker=False) == "web-8002"  # a second web process


@pytest.mark.slow
def test_the_worker_writes_worker_log(tmp_path: Path) -> None:
    sock = str(tmp_path / "w.sock")
    env = {**os.environ, "MLXM_DATA_DIR": str(tmp_path), "MLXM_LOG_LEVEL": "INFO", "MLXM_LOG_PROCESS": "web"}
    proc = subprocess.Popen([sys.executable, "-m", "inference.worker", "--socket", sock], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline, "worker did not start"
            time.sleep(0.05)
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    path = tmp_path / "logs" / "worker.log"
    assert not (tmp_path / "logs" / "web.log").exists()  # the worker names its own file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    records = _records(path, "worker")
    started = next(r for r in records if "listening on" in r.message)
    assert started.pid == str(proc.pid) and started.logger == "inference.worker.server"
    assert f"worker[{proc.pid}]" in err  # the console has the same lines
