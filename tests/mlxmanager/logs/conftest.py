"""Fixtures for the Logs page and the debug report: users, a log folder with files written by the
real formatter, and no worker."""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from django.test import AsyncClient, Client

from inference import logsetup
from tests.mlxmanager.accounts.conftest import (  # noqa: F401  (fixtures)
    _fast_password_hashing,
    admin,
    make_user,
    member,
)
from tests.mlxmanager.pool.conftest import start_worker  # noqa: F401  (fixture)

WriteLog = Callable[..., None]


@pytest.fixture
def admin_client(admin) -> Client:  # type: ignore[no-untyped-def]  # noqa: F811
    c = Client()
    c.force_login(admin)
    return c


@pytest.fixture
def member_client(member) -> Client:  # type: ignore[no-untyped-def]  # noqa: F811
    c = Client()
    c.force_login(member)
    return c


@pytest_asyncio.fixture
async def admin_aclient(admin) -> AsyncClient:  # type: ignore[no-untyped-def]  # noqa: F811
    """The events and the report are async views: driven through the async stack."""
    c = AsyncClient()
    await c.aforce_login(admin)
    return c


@pytest_asyncio.fixture
async def member_aclient(member) -> AsyncClient:  # type: ignore[no-untyped-def]  # noqa: F811
    c = AsyncClient()
    await c.aforce_login(member)
    return c


@pytest.fixture
def no_worker(settings: Any, tmp_path: Path) -> str:
    settings.MLXM_WORKER_SOCKET = str(tmp_path / "nobody-listens.sock")
    settings.MLXM_WORKER_CONNECT_TIMEOUT = 0.5
    return settings.MLXM_WORKER_SOCKET


@pytest.fixture
def log_dir(settings: Any, tmp_path: Path) -> Path:
    path = logsetup.log_dir(tmp_path)
    settings.MLXM_LOG_DIR = path
    return path


@pytest.fixture
def write_log(log_dir: Path) -> WriteLog:
    """`write_log(process, level, message, request_id="-", exc=None)`: one record in
    `<log_dir>/<process>.log`, through the product's formatter (plain unless MLXM_LOG_FORMAT)."""
    loggers: dict[str, logging.Logger] = {}

    def write(
        process: str, level: int, message: str, *, request_id: str = "-", exc: BaseException | None = None
    ) -> None:
        log = loggers.get(process)
        if log is None:
            log = loggers[process] = logging.Logger(f"tests.{process}", logging.DEBUG)  # not in the registry
            handler = logging.handlers.RotatingFileHandler(
                logsetup.log_file(log_dir.parent, process), encoding="utf-8"
            )
            handler.setFormatter(logsetup.make_formatter(process))
            log.addHandler(handler)
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        log.log(level, message, extra={"request_id": request_id}, exc_info=exc_info)
        for h in log.handlers:
            h.flush()

    yield write  # type: ignore[misc]
    for log in loggers.values():
        for h in log.handlers:
            h.close()


def boom() -> BaseException:
    try:
        raise ValueError("the weights are not where the profile says")
    except ValueError as exc:
        return exc
