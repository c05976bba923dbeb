"""Security headers on pages, and `manage.py check --deploy` clean in secure (TLS) mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from mlxmanager.security import POLICY

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_pages_get_the_policy_and_the_usual_headers(client: Client) -> None:
    resp = client.get("/login/")
    assert resp["Content-Security-Policy"] == POLICY
    assert "script-src 'self'" in POLICY and "'unsafe-eval'" not in POLICY
    assert resp["X-Frame-Options"] == "DENY"
    assert resp["X-Content-Type-Options"] == "nosniff"
    assert resp["Referrer-Policy"] == "same-origin"
    # JSON answers and the generated API docs (Swagger UI from a CDN) go without it.
    assert "Content-Security-Policy" not in client.get("/healthz")
    assert "Content-Security-Policy" not in client.get("/api/docs")


def _check_deploy(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLXM_DATA_DIR": str(tmp_path), **extra}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_check_deploy_is_clean_in_secure_mode(tmp_path: Path) -> None:
    secure = _check_deploy(tmp_path, MLXM_SECURE="1")
    assert secure.returncode == 0, secure.stdout + secure.stderr
    assert "no issues" in secure.stdout
    # The local default (plain HTTP on 127.0.0.1) is what the check warns about.
    plain = _check_deploy(tmp_path, MLXM_SECURE="0")
    assert plain.returncode != 0 and "SECURE_HSTS_SECONDS" in plain.stderr + plain.stdout
