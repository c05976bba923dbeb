"""The debug report: what is in it, made with the worker down or up, and no secret anywhere in it."""

from __future__ import annotations

import io
import json
import logging
import secrets
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.core.management import call_command

from mlxmanager.accounts.services import api_key_create
from mlxmanager.credentials import crypto
from mlxmanager.credentials.services import credential_create
from mlxmanager.downloads import hub
from mlxmanager.downloads.services import hub_token_set
from mlxmanager.logs import report
from mlxmanager.profiles.models import Profile
from tests.mlxmanager.logs.conftest import WriteLog, boom

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def key_file(tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("MLXM_CREDENTIALS_KEY", raising=False)
    settings.MLXM_CREDENTIALS_KEY_FILE = tmp_path / "credentials.key"
    crypto.keyring.reload()
    hub.forget_stored_token()
    yield settings.MLXM_CREDENTIALS_KEY_FILE
    crypto.keyring.reload()
    hub.forget_stored_token()


def _unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name.split("/", 1)[1]: zf.read(name) for name in zf.namelist()}


def _build() -> tuple[str, dict[str, bytes], bytes]:
    name, data = async_to_sync(report.build)()
    return name, _unzip(data), data


def test_made_with_the_worker_down_and_says_so(write_log: WriteLog, no_worker: str) -> None:
    Profile.objects.create(name="tiny", model_path="/models/tiny")
    for i in range(600):
        write_log("web", logging.INFO, f"request {i}", request_id=f"rid-{i}")
    write_log("worker", logging.ERROR, "generation failed", exc=boom())
    name, files, _ = _build()
    assert name.startswith("mlxmanager-debug-") and name.endswith(".zip")
    assert sorted(files) == sorted([
        "README.txt", "versions.json", "platform.json", "settings.json", "environment.json",
        "healthz.json", "pool.json", "errors.txt", "logs/web.log", "logs/worker.log",
    ])  # fmt: skip
    readme = files["README.txt"].decode()
    assert "Worker: DOWN" in readme and "logs/worker.log" in readme
    health = json.loads(files["healthz.json"])
    assert health["status"] == "degraded" and health["worker"]["state"] == "down"
    versions = json.loads(files["versions.json"])
    assert versions["web"]["packages"]["django"].startswith("5.")
    assert versions["web"]["python"].count(".") == 2
    assert versions["worker"]["state"] == "down"
    platform_ = json.loads(files["platform.json"])
    assert platform_["memory"]["total_bytes"] > 0 and platform_["cpu_count"] >= 1
    pool = json.loads(files["pool.json"])
    assert pool["worker"] == "down" and pool["available_profiles"] == ["tiny"]
    settings_ = json.loads(files["settings.json"])
    assert settings_["SECRET_KEY"] == "[redacted]" and settings_["CACHES"] == "[redacted]"
    assert settings_["MLXM_PORT"] == 8000 or isinstance(settings_["MLXM_PORT"], int)
    assert settings_["DATABASES"]["default"]["ENGINE"] == django_settings.DATABASES["default"]["ENGINE"]
    errors = files["errors.txt"].decode()
    assert "== worker" in errors and "generation failed" in errors
    assert "ValueError: the weights are not where the profile says" in errors  # with its traceback
    web = files["logs/web.log"].decode().splitlines()
    assert len(web) == 500 and web[-1].endswith("request 599") and web[0].endswith("request 100")


def test_no_secret_anywhere_in_it(
    admin: Any, write_log: WriteLog, no_worker: str, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def token(prefix: str) -> str:
        return prefix + secrets.token_urlsafe(24)

    _, api_key = api_key_create(user=admin, name="laptop")
    cloud = token("sk-proj-")
    credential_create(name="openai", provider="openai", secret=cloud)
    settings.SECRET_KEY = token("django-")
    stored_hf = "hf_" + secrets.token_hex(17)
    hub_token_set(token=stored_hf)
    env_hf = "hf_" + secrets.token_hex(17)
    monkeypatch.setenv("HF_TOKEN", env_hf)
    settings.MLXM_HF_TOKEN = env_hf
    metrics = token("metrics-")
    monkeypatch.setenv("MLXM_METRICS_TOKEN", metrics)
    settings.MLXM_METRICS_TOKEN = metrics
    worker_secret = token("worker-")
    monkeypatch.setenv("MLXM_WORKER_SECRET", worker_secret)
    settings.MLXM_WORKER_SECRET = worker_secret.encode()
    redis_password = token("redis-")
    monkeypatch.setenv("REDIS_URL", f"redis://default:{redis_password}@redis.internal:6379/0")
    db_password = token("db-")
    settings.MLXM_SOME_DSN = f"postgres://mlxm:{db_password}@db.internal/mlxm"
    odd = token("")  # a secret in an MLXM_ variable whose name says nothing
    monkeypatch.setenv("MLXM_UPSTREAM_EXTRA", odd)
    keyring = settings.MLXM_CREDENTIALS_KEY_FILE.read_text().strip()
    secrets_ = {
        "API key": api_key, "cloud credential": cloud, "SECRET_KEY": settings.SECRET_KEY,
        "stored HF token": stored_hf, "HF_TOKEN": env_hf, "metrics token": metrics,
        "worker secret": worker_secret, "Redis password": redis_password, "DSN password": db_password,
        "MLXM_ variable": odd, "credentials key": keyring,
    }  # fmt: skip
    # Whatever a careless log line may have said, in both files.
    for process in ("web", "worker"):
        write_log(process, logging.INFO, f"client sent Authorization: Bearer {api_key}")
        write_log(process, logging.WARNING, f"api_key={api_key} cloud {cloud} hub {stored_hf} {env_hf}")
        write_log(
            process, logging.ERROR, f"secrets {settings.SECRET_KEY} {metrics} {worker_secret} {keyring}"
        )
        write_log(
            process, logging.ERROR, f"connect redis://default:{redis_password}@redis.internal failed {odd}"
        )

    _, files, raw = _build()
    for what, value in secrets_.items():
        assert value.encode() not in raw, what
        for name, content in files.items():
            assert value.encode() not in content, f"the {what} is in {name}"
    # What was there is still there, without the secrets.
    env = json.loads(files["environment.json"])
    assert env["MLXM_METRICS_TOKEN"] == env["MLXM_WORKER_SECRET"] == env["HF_TOKEN"] == "[redacted]"
    assert env["MLXM_UPSTREAM_EXTRA"] == "[redacted]"
    assert env["REDIS_URL"] == "redis://default:[redacted]@redis.internal:6379/0"
    settings_ = json.loads(files["settings.json"])
    assert settings_["MLXM_SOME_DSN"] == "postgres://mlxm:[redacted]@db.internal/mlxm"
    assert settings_["MLXM_WORKER_SECRET"] == "[redacted]"
    assert settings_["MLXM_CREDENTIALS_KEY_FILE"] == str(settings.MLXM_CREDENTIALS_KEY_FILE)  # a path, kept
    web = files["logs/web.log"].decode()
    assert (
        "client sent Authorization: Bearer mlxm-[redacted]" in web
        and "connect redis://default:[redacted]@" in web
    )


def test_the_command_writes_an_owner_only_file(write_log: WriteLog, no_worker: str, tmp_path: Path) -> None:
    write_log("downloads", logging.INFO, "downloaded tiny")
    out = io.StringIO()
    target = tmp_path / "report.zip"
    call_command("debug_report", "--output", str(target), stdout=out)
    assert out.getvalue().strip() == str(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    files = _unzip(target.read_bytes())
    assert "downloaded tiny" in files["logs/downloads.log"].decode()
    folder = tmp_path / "reports"
    folder.mkdir()
    out = io.StringIO()
    call_command("debug_report", "--output", str(folder), stdout=out)
    written = Path(out.getvalue().strip())
    assert written.parent == folder and written.name.startswith("mlxmanager-debug-") and written.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_with_a_worker_its_versions_come_from_the_worker(start_worker: Any, log_dir: Path) -> None:
    start_worker()
    _, files, _ = _build()
    worker = json.loads(files["versions.json"])["worker"]
    assert worker["mlx"] and worker["backend"] in ("metal", "cuda", "cpu")
    assert worker["packages"]["mlx-lm"] and worker["python"].count(".") == 2
    assert json.loads(files["healthz.json"])["worker"]["state"] == "up"
    assert json.loads(files["pool.json"])["worker"] == "up"
    assert "Worker: up (pid " in files["README.txt"].decode()
