"""The team configuration on loopback: two web processes on one PostgreSQL database and one
Redis channel layer, in front of one inference worker. A login made through one process is
valid on the other; a request served by web process B shows up at once in the audit live
tail of a browser session connected to web process A (Redis carries it).

Runs in the PostgreSQL + Redis pass (`make test-team`, which sets DATABASE_URL and REDIS_URL);
skipped otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Gateway, _shared_dir, free_port, manage, stop_gateway

DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")

pytestmark = [
    pytest.mark.team,
    pytest.mark.xdist_group("live"),
    pytest.mark.skipif(
        not DATABASE_URL.startswith("postgres") or not REDIS_URL,
        reason="needs DATABASE_URL=postgres://… and REDIS_URL (run `make test-team`)",
    ),
]
PASSWORD = "correct-horse-battery"


@pytest.fixture
def team_database() -> Iterator[str]:
    """A database of its own on the PostgreSQL server of DATABASE_URL, dropped afterwards."""
    import psycopg

    name = f"mlxm_team_{uuid.uuid4().hex[:8]}"
    admin_url = DATABASE_URL.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield DATABASE_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def serve(env: dict[str, str], port: int, log: Path, *extra: str) -> Gateway:
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), *extra],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Gateway(url=f"http://127.0.0.1:{port}", key="", data_dir=Path(env["MLXM_DATA_DIR"]), proc=proc,
                   log_path=log)  # fmt: skip


def log_in(url: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=30)
    http.get("/login/")
    r = http.post(
        "/login/",
        data={"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": http.cookies["csrftoken"]},
    )
    assert r.status_code == 302, r.text[:300]
    return http


async def tail_one_row(ws_url: str, cookie: str, origin: str, trigger: object) -> dict:
    """Connect to the audit live tail, run `trigger()` (a request through the other web
    process), and return the first pushed message."""
    import websockets

    async with websockets.connect(ws_url, additional_headers={"Cookie": cookie, "Origin": origin}) as ws:
        await asyncio.to_thread(trigger)  # type: ignore[arg-type]
        return json.loads(await asyncio.wait_for(ws.recv(), timeout=30))


def test_two_web_processes_share_sessions_and_live_updates(
    demo_models: dict[str, Path], tmp_path: Path, team_database: str
) -> None:
    env = {
        **os.environ,
        "MLXM_DATA_DIR": str(tmp_path),
        "DATABASE_URL": team_database,
        "REDIS_URL": REDIS_URL,
        "MLXM_LOG_LEVEL": "WARNING",
        "MLXM_AUDIT_FLUSH_INTERVAL": "0.2",
        "DJANGO_SETTINGS_MODULE": "mlxmanager.settings",
    }
    manage("migrate", "--noinput", "-v0", env=env)
    manage("prepare_demo_models", "--data-dir", str(_shared_dir()), env=env)
    manage("create_admin", "--username", "admin", "--password-stdin", env=env, stdin=PASSWORD + "\n")
    key = manage("create_api_key", "--username", "admin", "--name", "team", env=env).strip().splitlines()[-1]

    # A: web + the worker (+ downloads); B: a second web process on the same worker socket.
    a = serve(env, free_port(), tmp_path / "a.log")
    b = serve(env, free_port(), tmp_path / "b.log", "--no-worker", "--no-downloads")
    try:
        a.wait_healthy()
        b.wait_healthy()

        # A login through B is a login on A: sessions live in the shared database.
        via_b = log_in(b.url)
        cookie = "; ".join(f"{k}={v}" for k, v in via_b.cookies.items())
        assert httpx.get(a.url + "/api/keys/", headers={"Cookie": cookie}, timeout=30).status_code == 200

        def request_through_b() -> None:
            r = httpx.post(
                b.url + "/v1/chat/completions",
                json={
                    "model": "tiny-random",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 3,
                },
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )
            assert r.status_code == 200, r.text

        # The audit row written by B reaches the live tail held open on A, through Redis.
        message = asyncio.run(
            tail_one_row(a.url.replace("http", "ws") + "/audit/ws", cookie, a.url, request_through_b)
        )
        assert message["type"] == "rows" and "tiny-random" in message["html"]

        # Both processes serve /v1 with the same key and see the same audit rows.
        r = httpx.get(a.v1 + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200 and "tiny-random" in r.text
        rows = httpx.get(a.url + "/api/audit/requests", headers={"Cookie": cookie}, timeout=30).json()[
            "items"
        ]
        assert any(row["requested_model"] == "tiny-random" for row in rows)
    finally:
        stop_gateway(b)
        stop_gateway(a)
