"""Security headers on pages, and `manage.py check --deploy` clean in secure (TLS) mode."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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
    # JSON answers go without it.
    assert "Content-Security-Policy" not in client.get("/healthz")


@pytest.mark.django_db
def test_the_api_docs_load_only_our_own_assets_under_the_policy(admin_user: Any) -> None:
    """Swagger UI is served from /static/ (no CDN script of a floating version, no inline
    script), so the docs page gets the same policy as every page."""
    client = Client()
    client.force_login(admin_user)
    resp = client.get("/api/docs")
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/html")
    assert resp["Content-Security-Policy"] == POLICY
    html = resp.content.decode()
    assets = re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)=[\"']([^\"']+)", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in (a for a in assets if not a.startswith("data:")):  # the favicon: no request
        assert asset.startswith("/static/"), asset  # same origin: no http(s)://, no //cdn
        assert client.get(asset).status_code == 200, asset
    # (The favicon is a data: URL naming the SVG namespace, no request.)
    assert not re.search(r"https?://|//cdn", re.sub(r"\"data:[^\"]*\"", '""', html))
    # The only inline <script> is the settings block, data the policy does not run.
    inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", html)
    assert inline == [' type="application/json" id="swagger-settings"'], inline
    # Swagger UI's default validator badge would load an image from validator.swagger.io.
    assert '"validatorUrl": null' in html


@pytest.mark.django_db
def test_the_csrf_cookie_is_http_only(client: Client) -> None:
    """No script reads it: pages take the token from the markup (`hx-headers` on <body>, the
    docs page's data attribute)."""
    resp = client.get("/login/")
    cookie = resp.cookies["csrftoken"]
    assert cookie["httponly"] is True and cookie["samesite"] == "Lax"


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


@contextlib.contextmanager
def _web_server(tmp_path: Path, **extra: str) -> Iterator[str]:
    """The product's web server command (uvicorn, as `manage.py serve` runs it) in secure mode."""
    from mlxmanager import webserver
    from tests.conftest import free_port, manage

    port = free_port()
    env = {**os.environ, "MLXM_DATA_DIR": str(tmp_path), "MLXM_SECURE": "1",
           "DJANGO_SETTINGS_MODULE": "mlxmanager.settings", **extra}  # fmt: skip
    env.pop("DATABASE_URL", None)
    manage("migrate", "--noinput", "-v0", env=env)  # the login page reads the SSO settings
    cmd = webserver.command(
        "127.0.0.1", port, forwarded_allow_ips=env.get("MLXM_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/healthz", timeout=5)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "no output") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_x_forwarded_proto_is_believed_only_from_the_allowed_proxies(tmp_path: Path) -> None:
    """In secure mode a plain-HTTP request is redirected to HTTPS. A client that is not one of
    MLXM_FORWARDED_ALLOW_IPS must not be able to say "it was HTTPS" with X-Forwarded-Proto
    (and so be served over plain HTTP, with cookies marked secure sent back over it)."""
    https = {"X-Forwarded-Proto": "https"}
    with _web_server(tmp_path, MLXM_FORWARDED_ALLOW_IPS="10.255.255.1") as url:
        spoofed = httpx.get(url + "/login/", headers=https, timeout=10)
        assert spoofed.status_code == 301 and spoofed.headers["location"].startswith("https://")
    # From an allowed proxy the header is believed: the page is served, as behind a TLS proxy.
    with _web_server(tmp_path, MLXM_FORWARDED_ALLOW_IPS="127.0.0.1") as url:
        proxied = httpx.get(url + "/login/", headers=https, timeout=10)
        assert proxied.status_code == 200 and "Strict-Transport-Security" in proxied.headers
        assert httpx.get(url + "/login/", timeout=10).status_code == 301  # and without it: HTTP
