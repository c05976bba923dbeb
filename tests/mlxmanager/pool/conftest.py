"""Fixtures for the pool tests: users, and a real inference worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from django.test import AsyncClient, Client

from tests.mlxmanager.accounts.conftest import (  # noqa: F401  (fixtures)
    _fast_password_hashing,
    admin,
    make_user,
    member,
    member_client,
)

ROOT = Path(__file__).resolve().parents[3]
StartWorker = Callable[..., str]


@pytest.fixture
def admin_client(client: Client, admin) -> Client:  # type: ignore[no-untyped-def]  # noqa: F811
    client.force_login(admin)
    return client


@pytest_asyncio.fixture
async def admin_aclient(admin) -> AsyncClient:  # type: ignore[no-untyped-def]  # noqa: F811
    """The pool's views are async: drive them through the async stack, as the web server does."""
    client = AsyncClient()
    await client.aforce_login(admin)
    return client


@pytest_asyncio.fixture
async def member_aclient(member) -> AsyncClient:  # type: ignore[no-untyped-def]  # noqa: F811
    client = AsyncClient()
    await client.aforce_login(member)
    return client


@pytest.fixture
def no_worker(settings: Any, tmp_path: Path) -> str:
    settings.MLXM_WORKER_SOCKET = str(tmp_path / "nobody-listens.sock")
    return settings.MLXM_WORKER_SOCKET


@pytest.fixture
def start_worker(tmp_path: Path, settings: Any) -> Iterator[StartWorker]:
    """`start_worker(memory_limit_bytes=None)`: run `python -m inference.worker` and point
    settings.MLXM_WORKER_SOCKET at it; stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(memory_limit_bytes: int | None = None) -> str:
        sock = str(tmp_path / f"w{len(procs)}.sock")
        env = {**os.environ, "MLXM_DATA_DIR": str(tmp_path), "MLXM_LOG_LEVEL": "WARNING"}
        if memory_limit_bytes is not None:
            env["MLXM_MEMORY_LIMIT_BYTES"] = str(memory_limit_bytes)
        proc = subprocess.Popen(
            [sys.executable, "-m", "inference.worker", "--socket", sock], cwd=ROOT, env=env
        )
        procs.append(proc)
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline, "worker did not start"
            time.sleep(0.05)
        settings.MLXM_WORKER_SOCKET = sock
        return sock

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def worker(start_worker: StartWorker) -> str:
    return start_worker()
