"""Outgrowing one machine, on loopback.

- Two web processes on one PostgreSQL database and one Redis channel layer, and two inference
  workers (A's embedded one and one on TCP registered through B): a login made through one
  web process is valid on the other; requests spread over both workers; a browser on A's
  Downloads page sees the progress of a download started through B; a request served by B
  shows up at once in the audit live tail held open on A (Redis carries it); the TCP worker
  killed, its traffic fails over. Runs in the PostgreSQL + Redis pass (`make test-team`,
  which sets DATABASE_URL and REDIS_URL); skipped otherwise.
- Two inference workers (the embedded one and one started with `--listen`): requests spread
  over both, a wrong secret is refused, a killed worker's traffic fails over.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, chromium, open_page  # noqa: F401
from tests.conftest import ROOT, Gateway, _shared_dir, free_port, manage, stop_gateway

DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")

pytestmark = [pytest.mark.xdist_group("live")]
needs_team_services = pytest.mark.skipif(
    not DATABASE_URL.startswith("postgres") or not REDIS_URL,
    reason="needs DATABASE_URL=postgres://… and REDIS_URL (run `make test-team`)",
)
PASSWORD = "correct-horse-battery"


def arun(coro: Any) -> Any:
    """asyncio.run in a thread of its own: Playwright's sync API keeps a loop running here."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


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


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A child in its own session (killed with its group), its output in `log`."""
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def launch_command(ranks: int, *script: str) -> list[str]:
    """`mlx.launch` running `script` on `ranks` ranks on 127.0.0.1 (ring backend)."""
    launch = Path(sys.executable).parent / "mlx.launch"
    if not launch.exists():
        pytest.skip("mlx.launch not installed")
    return [str(launch), "--backend", "ring", "-n", str(ranks), "--hosts", "127.0.0.1", "--starting-port",
            str(free_port()), "--cwd", str(ROOT), "--python", sys.executable, "--", *script]  # fmt: skip


def serve(env: dict[str, str], port: int, log: Path, *extra: str) -> Gateway:
    # Its own metrics folder: `serve` empties the one it is given, which would be this process's.
    env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = spawn([sys.executable, "manage.py", "serve", "--port", str(port), *extra], env, log)
    return Gateway(url=f"http://127.0.0.1:{port}", key="", data_dir=Path(env["MLXM_DATA_DIR"]), proc=proc,
                   log_path=log)  # fmt: skip


def log_in_http(url: str) -> httpx.Client:
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


@pytest.mark.team
@needs_team_services
@NEEDS_CHROMIUM
def test_two_web_processes_two_workers_share_state_and_live_updates(
    demo_models: dict[str, Path],
    tmp_path: Path,
    team_database: str,
    open_page: Any,  # noqa: F811
) -> None:
    """Two web processes (A with the embedded worker and the downloader, B alone) on one
    PostgreSQL and one Redis, plus a second inference worker on TCP registered through B."""
    import signal

    from playwright.sync_api import expect

    from tests.browser.conftest import log_in
    from tests.browser.test_discover_and_download import MODEL, add_showcase_repo
    from tests.mlxmanager.downloads.conftest import add_standard_repos
    from tests.mlxmanager.downloads.fakehub import FakeHub

    secret = "another-long-shared-secret-0123456"
    hub = FakeHub().start()
    add_standard_repos(hub)
    add_showcase_repo(hub)
    env = {
        **os.environ,
        "MLXM_DATA_DIR": str(tmp_path),
        "DATABASE_URL": team_database,
        "REDIS_URL": REDIS_URL,
        "MLXM_LOG_LEVEL": "WARNING",
        "MLXM_AUDIT_FLUSH_INTERVAL": "0.2",
        "MLXM_WORKER_SECRET": secret,
        "MLXM_HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "MLXM_MEMORY_LIMIT_BYTES": str(48 * 1024**3),
        "DJANGO_SETTINGS_MODULE": "mlxmanager.settings",
    }
    env.pop("HF_TOKEN", None)
    manage("migrate", "--noinput", "-v0", env=env)
    manage("prepare_demo_models", "--data-dir", str(_shared_dir()), env=env)
    manage("create_admin", "--username", "admin", "--password-stdin", env=env, stdin=PASSWORD + "\n")
    key = manage("create_api_key", "--username", "admin", "--name", "team", env=env).strip().splitlines()[-1]

    a = serve(env, free_port(), tmp_path / "a.log")
    b = serve(env, free_port(), tmp_path / "b.log", "--no-worker", "--no-downloads")
    port = free_port()
    (tmp_path / "w2").mkdir()
    w2 = spawn(
        [sys.executable, "manage.py", "inference_worker", "--listen", f"127.0.0.1:{port}"],
        {**env, "MLXM_DATA_DIR": str(tmp_path / "w2")},
        tmp_path / "w2.log",
    )
    try:
        a.wait_healthy()
        b.wait_healthy()
        wait_for_worker(f"tcp://127.0.0.1:{port}", secret.encode())

        # A login through B is a login on A: sessions live in the shared database.
        via_b = log_in_http(b.url)
        cookie = "; ".join(f"{k}={v}" for k, v in via_b.cookies.items())
        assert httpx.get(a.url + "/api/keys/", headers={"Cookie": cookie}, timeout=30).status_code == 200

        # The second worker, registered through B, serves requests that arrive at A.
        r = via_b.post("/workers/", data={"name": "w2", "address": f"127.0.0.1:{port}"},
                       headers={"X-CSRFToken": via_b.cookies["csrftoken"]})  # fmt: skip
        assert r.status_code == 200 and "w2" in r.text
        time.sleep(5.5)  # web processes re-read the registered workers every 5 s
        assert spread_burst(a, key, 8) == 8
        tokens = {name: _tokens(models, "tiny-random") for name, models in (
            ("embedded", a.health().json()["worker"]["loaded_models"]),
            ("w2", _remote_health(f"tcp://127.0.0.1:{port}", secret.encode())["models"]),
        )}  # fmt: skip
        assert all(t > 0 for t in tokens.values()), tokens

        # A browser on A's Downloads page sees the progress of a download started through B.
        page = open_page()
        log_in(page, a.url, "admin", PASSWORD)
        page.goto(a.url + "/downloads/")
        hub.throttle = 700_000
        r = via_b.post(
            "/api/downloads", json={"repo_id": MODEL}, headers={"X-CSRFToken": via_b.cookies["csrftoken"]}
        )
        assert r.status_code == 201, r.text
        bar = page.locator(f"#downloads-panel tr:has-text('{MODEL}') [role=progressbar]")
        expect(bar).to_have_count(1, timeout=30_000)
        seen = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(0 < v < 100 for v in seen):
            seen.add(int(bar.get_attribute("aria-valuenow") or 0))
            time.sleep(0.2)
        assert any(0 < v < 100 for v in seen), seen
        hub.throttle = None
        page.close()  # before the servers stop under its open event stream

        # The audit row of a request served by B reaches the live tail held open on A (Redis).
        def request_through_b() -> None:
            assert spread_burst(b, key, 1) == 1

        message = arun(
            tail_one_row(a.url.replace("http", "ws") + "/audit/ws", cookie, a.url, request_through_b)
        )
        assert message["type"] == "rows" and "tiny-random" in message["html"]

        # The second worker dies: its share of the traffic fails over to the embedded one.
        os.killpg(w2.pid, signal.SIGKILL)
        w2.wait()
        assert spread_burst(a, key, 6) == 6
        assert spread_burst(b, key, 2) == 2
    finally:
        if w2.poll() is None:
            os.killpg(w2.pid, signal.SIGKILL)
        stop_gateway(b)
        stop_gateway(a)
        hub.stop()


def wait_for_worker(address: str, secret: bytes) -> None:
    from inference.client import EngineDeadError

    for _ in range(300):
        try:
            _remote_health(address, secret)
            return
        except EngineDeadError:
            time.sleep(0.2)
    raise AssertionError(f"no worker at {address}")


def spread_burst(gw: Gateway, key: str, n: int) -> int:
    """`n` concurrent chat requests through `gw`; returns how many finished properly."""

    async def one(client: httpx.AsyncClient, i: int) -> bool:
        r = await client.post(
            gw.url + "/v1/chat/completions",
            json={
                "model": "tiny-random",
                "messages": [{"role": "user", "content": f"q{i}"}],
                "max_tokens": 24,
            },
            headers={"Authorization": f"Bearer {key}"},
        )
        return r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop")

    async def burst() -> int:
        async with httpx.AsyncClient(timeout=120) as client:
            return sum(await asyncio.gather(*(one(client, i) for i in range(n))))

    return arun(burst())


# ---- several workers ------------------------------------------------------------------


def _remote_health(address: str, secret: bytes, tls_ca: str | None = None) -> dict:
    from inference.client import EngineClient

    async def ask() -> dict:
        client = EngineClient(address, secret=secret, connect_timeout=5, tls_ca=tls_ca)
        try:
            return await client.health(timeout=5)
        finally:
            await client.aclose()

    return arun(ask())


def _tokens(models: list[dict], name: str) -> int:
    return sum(m.get("tokens_generated", 0) for m in models if m.get("name") == name)


@pytest.mark.slow
def test_requests_spread_over_two_workers_and_fail_over(
    demo_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded worker plus one started with `inference_worker --listen` (shared secret):
    concurrent requests land on both; a conversation's follow-up turn goes back to the worker
    holding its start and is served from its prompt cache; a peer with the wrong secret is
    refused; when the remote worker is killed, its traffic moves to the embedded one without
    a failed request."""
    import signal

    from inference.client import EngineDeadError
    from tests.conftest import start_gateway
    from tests.gateway_fixtures import Admin

    secret = b"a-long-shared-secret-for-tests-0123"
    monkeypatch.setenv("MLXM_WORKER_SECRET", secret.decode())
    monkeypatch.delenv("DATABASE_URL", raising=False)
    gw = start_gateway(tmp_path / "gw", demo_models)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "MLXM_DATA_DIR": str(tmp_path / "remote"), "MLXM_LOG_LEVEL": "WARNING"}
    (tmp_path / "remote").mkdir()
    remote = spawn(
        [sys.executable, "manage.py", "inference_worker", "--listen", f"127.0.0.1:{port}"],
        env,
        tmp_path / "remote.log",
    )
    try:
        for _ in range(100):
            try:
                _remote_health(address, secret)
                break
            except EngineDeadError:
                time.sleep(0.2)
        else:
            raise AssertionError((tmp_path / "remote.log").read_text()[-2000:])
        with pytest.raises(EngineDeadError, match="refused"):
            _remote_health(address, b"not-the-secret-not-the-secret")

        admin = Admin(gw)
        r = admin.http.post(
            "/workers/",
            data={"name": "remote-1", "address": f"127.0.0.1:{port}"},
            headers={"X-CSRFToken": admin.csrf},
        )
        assert r.status_code == 200 and "remote-1" in r.text
        page = admin.http.get("/workers/").text
        assert address in page and page.count('class="badge ok">up<') == 2

        async def burst(n: int) -> list[str]:
            client = gw.async_openai()
            answers = await asyncio.gather(*(
                client.chat.completions.create(
                    model="tiny-random", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=24
                )
                for i in range(n)
            ))  # fmt: skip
            return [a.choices[0].finish_reason for a in answers]

        time.sleep(5.5)  # web processes re-read the registered workers every 5 s
        assert all(f in ("length", "stop") for f in arun(burst(8)))
        local_tokens = _tokens(gw.health().json()["worker"]["loaded_models"], "tiny-random")
        remote_tokens = _tokens(_remote_health(address, secret)["models"], "tiny-random")
        assert local_tokens > 0 and remote_tokens > 0, (local_tokens, remote_tokens)

        # Conversations started at once spread over both workers; their follow-up turns, sent
        # at once too, each go back to the worker holding their start (prefix routing,
        # inference/affinity.py), whose prompt cache serves it.
        async def conversations(n: int) -> list[float]:
            client = gw.async_openai()
            starts = [
                [{"role": "system", "content": f"Patch {i}: you review it line by line. " * 20},
                 {"role": "user", "content": "first look"}]
                for i in range(n)
            ]  # fmt: skip
            firsts = await asyncio.gather(*(  # long enough to overlap: they spread
                client.chat.completions.create(model="tiny-random", messages=m, max_tokens=64, temperature=0)
                for m in starts
            ))  # fmt: skip
            follow_ups = [
                [*m, {"role": "assistant", "content": f.choices[0].message.content or ""},
                 {"role": "user", "content": "second look"}]
                for m, f in zip(starts, firsts, strict=True)
            ]  # fmt: skip
            # In reverse order: least-loaded alone would send them to the other worker.
            seconds = await asyncio.gather(*(
                client.chat.completions.create(model="tiny-random", messages=m, max_tokens=8, temperature=0)
                for m in reversed(follow_ups)
            ))  # fmt: skip
            # The worker holding the start has the system prompt cached; the other would have
            # only the chat template's first few tokens.
            return [s.usage.prompt_tokens_details.cached_tokens / s.usage.prompt_tokens  # type: ignore[union-attr]
                    for s in seconds]  # fmt: skip

        before = (_tokens(gw.health().json()["worker"]["loaded_models"], "tiny-random"),
                  _tokens(_remote_health(address, secret)["models"], "tiny-random"))  # fmt: skip
        cached = arun(conversations(6))
        assert all(share > 0.5 for share in cached), cached
        local_tokens = _tokens(gw.health().json()["worker"]["loaded_models"], "tiny-random")
        remote_tokens = _tokens(_remote_health(address, secret)["models"], "tiny-random")
        assert local_tokens > before[0] and remote_tokens > before[1], (before, local_tokens, remote_tokens)

        # Kill the remote worker: every request still succeeds, on the embedded one.
        os.killpg(remote.pid, signal.SIGKILL)
        remote.wait()
        assert all(f in ("length", "stop") for f in arun(burst(6)))
        assert _tokens(gw.health().json()["worker"]["loaded_models"], "tiny-random") > local_tokens
        assert 'class="badge warn">down<' in admin.http.get("/workers/").text
    finally:
        if remote.poll() is None:
            os.killpg(remote.pid, signal.SIGKILL)
        stop_gateway(gw)


@pytest.mark.slow
def test_a_worker_over_tls_needs_the_right_certificate_and_secret(tmp_path: Path) -> None:
    """`--listen` with `--tls-cert/--tls-key`: a client that trusts the certificate and knows
    the secret is served; plain TCP, an untrusted certificate or a wrong secret are not."""
    import signal

    from inference.client import EngineDeadError

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    secret = b"tls-shared-secret-0123456789"
    port = free_port()
    env = {**os.environ, "MLXM_WORKER_SECRET": secret.decode(), "MLXM_LOG_LEVEL": "WARNING"}
    worker = spawn(
        [
            sys.executable,
            "-m",
            "inference.worker",
            "--socket",
            str(tmp_path / "w.sock"),
            "--listen",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],  # fmt: skip
        env,
        tmp_path / "w.log",
    )
    address = f"tls://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                health = _remote_health(address, secret, tls_ca=str(cert))
                break
            except EngineDeadError:
                time.sleep(0.2)
        else:
            raise AssertionError((tmp_path / "w.log").read_text()[-2000:])
        assert health["pid"] == worker.pid
        with pytest.raises(EngineDeadError):
            _remote_health(f"tcp://127.0.0.1:{port}", secret)  # plain TCP to a TLS port
        with pytest.raises(EngineDeadError):
            _remote_health(address, secret)  # the system CAs don't trust a self-signed cert
        with pytest.raises(EngineDeadError, match="refused"):
            _remote_health(address, b"wrong-secret-wrong-secret", tls_ca=str(cert))
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


# ---- a model over an MLX distributed group ----------------------------------------------


@pytest.mark.slow
def test_a_distributed_group_serves_as_one_worker(demo_models: dict[str, Path], tmp_path: Path) -> None:
    """`mlx.launch -n 2 … manage.py inference_worker --listen`: both ranks load the model
    tensor-sharded; rank 0 serves the protocol and replicates its scheduler to rank 1. Batched
    greedy answers equal those of a plain single-process worker."""
    import signal

    from inference import protocol as p
    from inference.client import EngineClient

    secret = "distributed-shared-secret-0123"
    port = free_port()
    env = {
        **os.environ,
        "MLXM_WORKER_SECRET": secret,
        "MLXM_DATA_DIR": str(tmp_path),
        "MLXM_LOG_LEVEL": "WARNING",
    }
    group = spawn(
        launch_command(
            2,
            str(ROOT / "manage.py"),
            "inference_worker",
            "--socket",
            str(tmp_path / "group.sock"),
            "--listen",
            f"127.0.0.1:{port}",
        ),  # fmt: skip
        env,
        tmp_path / "group.log",
    )
    single = spawn([sys.executable, "-m", "inference.worker", "--socket", str(tmp_path / "single.sock")], env,
                   tmp_path / "single.log")  # fmt: skip
    spec = p.ModelSpec(name="tiny-random", path=str(demo_models["tiny-random"]))
    prompts = [
        ("The distributed group says", 24),
        ("Another prompt, longer than the first one", 16),
        ("Hi", 8),
    ]

    async def answers(address: str, key: bytes | None) -> list[tuple[str, str | None]]:
        client = EngineClient(address, secret=key, connect_timeout=5)

        async def one(i: int, prompt: str, n: int) -> tuple[str, str | None]:
            req = p.Generate(request_id=f"r{i}", model=spec, prompt=prompt,
                             sampling=p.SamplingParams(max_tokens=n, temperature=0.0))  # fmt: skip
            text, finish = "", None
            async for outs in client.generate(req):
                for o in outs:
                    text, finish = text + o.text, o.finish_reason or finish
            return text, finish

        try:
            return list(await asyncio.gather(*(one(i, *pn) for i, pn in enumerate(prompts))))
        finally:
            await client.aclose()

    try:
        wait_for_worker(f"tcp://127.0.0.1:{port}", secret.encode())
        wait_for_worker(str(tmp_path / "single.sock"), b"")
        sharded = arun(answers(f"tcp://127.0.0.1:{port}", secret.encode()))
        plain = arun(answers(str(tmp_path / "single.sock"), None))
        assert [f for _, f in sharded] == ["length"] * 3
        assert sharded == plain
        log = (tmp_path / "group.log").read_text()
        assert "Traceback" not in log, log[-2000:]
    finally:
        for proc in (group, single):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
