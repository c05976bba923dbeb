"""Shared fixtures. `gateway` runs the real product: `manage.py serve` (uvicorn + worker);
`gateway_on` runs a test under each supported web server (uvicorn, daphne)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# /healthz gives its details (worker pid, loaded models) only to admins and to this token; the
# servers the tests start inherit it from the environment, and `Gateway.health` sends it.
METRICS_TOKEN = os.environ.setdefault("MLXM_METRICS_TOKEN", "tests-metrics-" + secrets.token_hex(8))


def health_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {METRICS_TOKEN}"}


SERVERS = ("uvicorn", "daphne")  # MLXM_SERVER values (mlxmanager/webserver.py)


def _shared_dir() -> Path:
    # Demo models are built once per test run and shared by all xdist workers.
    base = Path(os.environ.get("MLXM_DATA_DIR") or ROOT / ".data" / "test")
    return base / "shared"


@pytest.fixture(scope="session")
def demo_models() -> dict[str, Path]:
    from inference.worker.testmodels.build import prepare_demo_models

    return prepare_demo_models(_shared_dir(), log=lambda _m: None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    url: str
    key: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    server: str = "uvicorn"

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def health(self) -> httpx.Response:
        return httpx.get(self.url + "/healthz", headers=health_headers(), timeout=10)

    def worker_pid(self) -> int:
        return int(self.health().json()["worker"]["pid"])

    def wait_healthy(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                last = self.health()
                if last.status_code == 200:
                    return last.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gateway not healthy: {last and last.text}\n{self.log_path.read_text()[-3000:]}")

    def openai(self, **kw: object):  # type: ignore[no-untyped-def]
        import openai

        return openai.OpenAI(base_url=self.v1, api_key=self.key, max_retries=0, timeout=120, **kw)

    def async_openai(self, **kw: object):  # type: ignore[no-untyped-def]
        import openai

        return openai.AsyncOpenAI(base_url=self.v1, api_key=self.key, max_retries=0, timeout=120, **kw)


def manage(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def start_gateway(
    data_dir: Path,
    demo_models: dict[str, Path],
    *,
    stream_interval_ms: str | None = "0",
    server: str | None = None,
    admin: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Gateway:
    """`manage.py serve` on a free port, under `server` (MLXM_SERVER; the environment's, else
    uvicorn, when None). Tests stream a frame per scheduler step
    (`stream_interval_ms="0"`): they check that text and tool arguments arrive in pieces,
    which a tiny model's 1,000+ tokens/s would pack into a few 10 ms frames; the interval itself
    is tested in tests/inference/worker/test_server.py. Benchmarks pass None: the product's default.
    `admin=False` starts a fresh install: no user and no key (`serve` prints the setup link).
    `extra_env` adds settings (e.g. MLXM_OIDC_* for single sign-on)."""
    port = free_port()
    env = {
        **({"MLXM_STREAM_INTERVAL_MS": stream_interval_ms} if stream_interval_ms is not None else {}),
        **os.environ,
        "MLXM_DATA_DIR": str(data_dir),
        "MLXM_PORT": str(port),
        "MLXM_LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "mlxmanager.settings",
        # Image URLs in the tests point at servers on 127.0.0.1.
        "MLXM_IMAGE_FETCH_PRIVATE": "1",
        **({"MLXM_SERVER": server} if server is not None else {}),
        **(extra_env or {}),
    }
    env.pop("DATABASE_URL", None)
    # Its own metrics folder: `serve` empties the one it is given, which would be this process's.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # migrate, prepare_demo_models, create_admin and create_api_key in one process.
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "prepare_gateway.py"), "--shared", str(_shared_dir()),
         *(["--admin"] if admin else [])],
        cwd=ROOT, env=env, input="correct-horse-battery\n" if admin else None,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"preparing the gateway failed:\n{out.stdout}\n{out.stderr}")
    key = out.stdout.strip().splitlines()[-1] if admin else ""
    log_path = data_dir / "serve.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    gw = Gateway(url=f"http://127.0.0.1:{port}", key=key, data_dir=data_dir, proc=proc, log_path=log_path,
                 server=env.get("MLXM_SERVER", "uvicorn"))  # fmt: skip
    try:
        gw.wait_healthy()
    except Exception:
        stop_gateway(gw)
        raise
    return gw


def stop_gateway(gw: Gateway) -> None:
    if gw.proc.poll() is None:
        os.killpg(gw.proc.pid, signal.SIGTERM)
        try:
            gw.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait()


@pytest.fixture(scope="session")
def gateway(demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One live server for the read-mostly end-to-end tests of a test session."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), demo_models)
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="session")
def daphne_gateway(
    demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The same live server as `gateway`, under daphne (MLXM_SERVER=daphne)."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway-daphne"), demo_models, server="daphne")
    yield gw
    stop_gateway(gw)


@pytest.fixture(params=SERVERS)
def gateway_on(request: pytest.FixtureRequest) -> Gateway:
    """`gateway` under uvicorn, `daphne_gateway` under daphne: the test runs under each."""
    return request.getfixturevalue("gateway" if request.param == "uvicorn" else "daphne_gateway")  # type: ignore[no-any-return]


@pytest.fixture
def own_gateway(demo_models: dict[str, Path], tmp_path: Path) -> Iterator[Gateway]:
    """A private live server for tests that break things (e.g. kill the worker)."""
    gw = start_gateway(tmp_path / "gw", demo_models)
    yield gw
    stop_gateway(gw)


@pytest.fixture(autouse=True)
def _audit_flusher_stops_before_the_database() -> Iterator[None]:
    """The audit recorder is per process, and its flusher thread starts with the first audited
    request. Stop it after each test (this teardown runs before pytest-django's): with the
    in-memory shared-cache test database, a flush racing the test database's teardown fails
    with "database table is locked"."""
    yield
    from mlxmanager.audit.recorder import recorder

    if recorder._thread is not None:
        recorder.stop()


@pytest.fixture(autouse=True)
def _no_cached_rows_across_tests() -> Iterator[None]:
    """Routing rules and API keys are cached per process for a few seconds; a test database
    flushed between tests would otherwise be served from the previous test's cache."""
    yield
    from mlxmanager.accounts import keycache
    from mlxmanager.rules.selectors import invalidate_routes

    invalidate_routes()
    keycache.clear()
