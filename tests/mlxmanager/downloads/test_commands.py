"""`manage.py downloader` as a real process: killed with SIGKILL mid-file, a standby
worker takes over and resumes from the partial bytes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mlxmanager.downloads.conftest import BIG, file_bytes, wait_for
from tests.mlxmanager.downloads.fakehub import FakeHub

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
SHARD = "model-00002-of-00002.safetensors"  # the smaller shard: fetched first


@pytest.fixture
def proc_env(fakehub: FakeHub, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "MLXM_DATA_DIR": str(tmp_path / "proc"),
        "MLXM_HF_ENDPOINT": fakehub.url,
        "MLXM_LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "mlxmanager.settings",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("DATABASE_URL", "HF_TOKEN", "REDIS_URL"):
        env.pop(name, None)
    manage("migrate", "--noinput", "-v0", env=env)
    return env


def manage(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def workers(proc_env: dict[str, str], tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "downloader", "--chunk-bytes", "16384"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def state(db: Path) -> tuple[str, int]:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT status, bytes_done FROM downloads_download").fetchone()
    return row[0], row[1]


def test_kill_9_mid_download_and_a_standby_worker_resumes_it(
    fakehub: FakeHub, proc_env: dict[str, str], workers: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    data = Path(proc_env["MLXM_DATA_DIR"])
    db = data / "mlxmanager.sqlite3"
    fakehub.throttle = 2_000  # a crawl until the standby worker is up
    manage(
        "shell",
        "-c",
        f"from mlxmanager.downloads.services import download_create; download_create(repo_id={BIG!r})",
        env=proc_env,
    )
    partial = data / "models" / "mlx-community--Big-Model-4bit" / ".mlxm-download" / (SHARD + ".incomplete")

    proc_env = {**proc_env, "MLXM_LOG_LEVEL": "INFO"}  # for downloads.log's lines, checked below
    first = start_worker(proc_env, tmp_path / "first.log")
    workers.append(first)
    wait_for(lambda: "downloader running" in (tmp_path / "first.log").read_text(), timeout=60)
    standby = start_worker(proc_env, tmp_path / "standby.log")
    workers.append(standby)
    wait_for(lambda: "waiting as a standby" in (tmp_path / "standby.log").read_text(), timeout=60)
    fakehub.throttle = 50_000
    wait_for(lambda: partial.is_file() and partial.stat().st_size > 50_000, timeout=60)

    first.send_signal(signal.SIGKILL)  # no goodbye: the row still says "running"
    first.wait(timeout=10)
    kept = partial.stat().st_size
    assert state(db)[0] == "running" and 50_000 < kept < 300_000
    fakehub.throttle = None

    wait_for(lambda: state(db)[0] == "completed", timeout=60)
    assert state(db)[1] == sum(len(f.data) for f in fakehub.repos[BIG].files.values())
    assert file_bytes(partial.parent.parent) == {n: f.data for n, f in fakehub.repos[BIG].files.items()}
    sha = fakehub.repos[BIG].files[SHARD].sha256
    assert any(0 < start <= kept for start in fakehub.ranges(f"/cdn/{sha}")), "resumed, not restarted"

    standby.send_signal(signal.SIGTERM)
    assert standby.wait(timeout=20) == 0
    # The downloaders wrote downloads.log, the standby only once it held the lock: it resumed.
    log = (data / "logs" / "downloads.log").read_text()
    assert " INFO downloads[" in log and "resuming 1 interrupted download(s)" in log
