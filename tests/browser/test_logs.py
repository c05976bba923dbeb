"""The Logs page in a real browser (Debian's chromium through Playwright), live gateway
(`manage.py serve`, whose processes each write their own file): a worker error with its
traceback, a /v1 request found by its request id, the level filter, the live tail, and the
debug report's download. Saves logs-wide.png (1400 px) and logs-phone.png (390 px)."""

from __future__ import annotations

import io
import re
import socket
import zipfile

import httpx
import pytest

from inference import protocol as p
from tests.browser.conftest import NEEDS_CHROMIUM, log_in, shot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("live"),
    NEEDS_CHROMIUM,
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect


def _unknown_model(gateway, rid: str) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(
        gateway.v1 + "/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {gateway.key}", "X-Request-ID": rid},
        timeout=30,
    )
    assert r.status_code == 404 and r.headers["X-Request-ID"] == rid


def test_logs_page(gateway, open_page) -> None:  # type: ignore[no-untyped-def]
    # A worker error with a traceback: a frame over the protocol's size limit on its socket.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(gateway.data_dir / "worker.sock"))
        s.sendall(p._LEN.pack(p.MAX_FRAME_BYTES + 1))
        s.settimeout(10)
        assert s.recv(1) == b""  # the worker hung up
    _unknown_model(gateway, "browser-logs-1")

    page = open_page(height=900, timeout_ms=20_000)
    log_in(page, gateway.url)
    page.get_by_role("link", name="Logs").click()
    expect(page.get_by_role("heading", name="Logs")).to_be_visible()
    records = page.locator("#log-records li.log-record")
    worker_error = records.filter(has_text="dropping a connection after a bad frame")
    expect(worker_error).to_have_count(1)
    expect(worker_error.locator(".log-proc")).to_contain_text("worker[")
    expect(worker_error.locator("pre.log-detail")).to_contain_text("Traceback (most recent call last):")
    expect(worker_error.locator("pre.log-detail")).to_contain_text("ValueError: frame of")
    expect(records.filter(has_text="Not Found: /v1/chat/completions").first).to_be_visible()
    expect(page.locator("#live-status")).not_to_have_class(re.compile(r"\boff\b"))  # the stream is open
    page.set_viewport_size({"width": 1400, "height": 900})
    shot(page, "logs-wide.png")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "logs-phone.png")
    page.set_viewport_size({"width": 1280, "height": 900})

    # Errors only: the 404's warning goes.
    page.get_by_label("Level").select_option("ERROR")
    expect(records.filter(has_text="Not Found: /v1/chat/completions")).to_have_count(0)
    expect(worker_error).to_have_count(1)
    assert "level=ERROR" in page.url
    page.get_by_label("Level").select_option("")

    # One request by its id; a second request with that id arrives live.
    page.get_by_label("Request id").fill("browser-logs-1")
    expect(records).to_have_count(1)
    expect(records.first).to_contain_text("Not Found: /v1/chat/completions")
    expect(records.first.locator(".log-rid")).to_have_text("browser-logs-1")
    _unknown_model(gateway, "browser-logs-1")
    expect(records).to_have_count(2)
    expect(page.locator("#log-records")).to_have_attribute("data-updates", re.compile(r"^[1-9]\d*$"))

    # The debug report: a .zip with the logs of every process.
    with page.expect_download() as info:
        page.get_by_role("button", name="Download debug report").click()
    download = info.value
    assert re.fullmatch(r"mlxmanager-debug-\d{8}-\d{6}\.zip", download.suggested_filename)
    with open(download.path(), "rb") as fh:
        names = zipfile.ZipFile(io.BytesIO(fh.read())).namelist()
    for name in ("logs/web.log", "logs/worker.log", "logs/downloads.log", "versions.json", "errors.txt"):
        assert any(n.endswith("/" + name) for n in names), (name, names)
