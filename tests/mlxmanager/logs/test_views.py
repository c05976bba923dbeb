"""The Logs page (admins only): filters through the htmx form, the live tail over SSE, and the
debug report's button (a POST with CSRF)."""

from __future__ import annotations

import asyncio
import io
import logging
import zipfile

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.test import AsyncClient, Client

from mlxmanager.asgi import application
from mlxmanager.logs import views
from tests.mlxmanager.logs.conftest import WriteLog, boom

HTMX = {"HX-Request": "true"}


def test_the_page_is_for_admins(member_client: Client, write_log: WriteLog) -> None:
    write_log("web", logging.INFO, "x")
    assert member_client.get("/logs/").status_code == 403
    assert "/logs/" not in member_client.get("/profiles/").content.decode()  # no nav link
    anonymous = Client().get("/logs/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_events_and_the_report_are_for_admins(
    member_aclient: AsyncClient, write_log: WriteLog
) -> None:
    assert (await member_aclient.get("/logs/events/")).status_code == 403
    assert (await member_aclient.post("/logs/debug-report/")).status_code == 403
    assert (await AsyncClient().post("/logs/debug-report/")).status_code == 302


def test_page_shows_records_newest_first_with_tracebacks(admin_client: Client, write_log: WriteLog) -> None:
    write_log("web", logging.INFO, "GET /v1/models answered", request_id="rid-page-1")
    write_log("worker", logging.ERROR, "loading <tiny> failed", exc=boom())
    resp = admin_client.get("/logs/")
    assert resp.status_code == 200
    html = resp.content.decode()
    assert 'aria-current="page">Logs' in html
    assert 'data-events="/logs/events/"' in html and "js/logs-live.js" in html
    assert html.index("loading &lt;tiny&gt; failed") < html.index(
        "GET /v1/models answered"
    )  # escaped, newest first
    assert '<pre class="log-detail" tabindex="0">Traceback (most recent call last):' in html
    assert "ValueError: the weights are not where the profile says</pre>" in html
    assert 'href="?request_id=rid-page-1"' in html
    assert '<option value="worker">worker</option>' in html
    assert 'action="/logs/debug-report/"' in html and "csrfmiddlewaretoken" in html


def test_filters_by_process_level_and_request_id(admin_client: Client, write_log: WriteLog) -> None:
    write_log("web", logging.INFO, "web info", request_id="abc-123")
    write_log("web", logging.WARNING, "web warning", request_id="def-456")
    write_log("worker", logging.ERROR, "worker error")
    write_log("downloads", logging.INFO, "download info")

    def shown(**params: str) -> list[str]:
        html = admin_client.get("/logs/", params, headers=HTMX).content.decode()
        assert "<html" not in html  # htmx gets only the records
        return [m for m in ("web info", "web warning", "worker error", "download info") if m in html]

    assert shown() == ["web info", "web warning", "worker error", "download info"]
    assert shown(process="worker") == ["worker error"]
    assert shown(level="WARNING") == ["web warning", "worker error"]
    assert shown(request_id="abc-123") == ["web info"]
    assert shown(process="web", level="warning", request_id="456") == ["web warning"]
    html = admin_client.get("/logs/", {"process": "worker"}).content.decode()
    assert '<option value="worker" selected>' in html
    resp = admin_client.get("/logs/", {"level": "LOUD"})
    assert resp.status_code == 400 and "the level is one of" in resp.content.decode()
    assert "No log lines match." in admin_client.get("/logs/", {"request_id": "zzz"}).content.decode()


def test_an_empty_log_folder(admin_client: Client, log_dir) -> None:  # type: ignore[no-untyped-def]
    assert "No log lines yet." in admin_client.get("/logs/").content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_events_stream_the_records_as_files_change(admin, write_log: WriteLog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Through the real ASGI app: the records at once, again when a file grows, for the filters
    in the query; a disconnect ends the response."""
    monkeypatch.setattr(views, "EVENT_EVERY_S", 0.05)
    await sync_to_async(write_log)("worker", logging.ERROR, "first failure", exc=boom())
    await sync_to_async(write_log)("web", logging.INFO, "not an error")
    login = Client()
    await sync_to_async(login.force_login)(admin)
    cookie = f"sessionid={login.cookies['sessionid'].value}".encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/logs/events/",
        "raw_path": b"/logs/events/",
        "query_string": b"level=ERROR",
        "headers": [(b"host", b"127.0.0.1"), (b"cookie", cookie)],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    app = ApplicationCommunicator(application, scope)
    await app.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await app.receive_output(timeout=10)
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream") in [(k.lower(), v) for k, v in start["headers"]]
    assert (await app.receive_output(timeout=10))["body"] == b"retry: 3000\n\n"
    event = (await app.receive_output(timeout=10))["body"].decode()
    assert event.startswith("event: logs\ndata: ") and event.endswith("\n\n") and "\n\n" not in event[:-2]
    assert "first failure" in event and "ValueError: the weights" in event and "not an error" not in event
    await sync_to_async(write_log)("worker", logging.ERROR, "second failure")
    event = (await app.receive_output(timeout=10))["body"].decode()
    assert event.startswith("event: logs\n") and "second failure" in event and "first failure" in event
    await app.send_input({"type": "http.disconnect"})
    await asyncio.wait_for(app.wait(), timeout=10)  # the view stopped streaming


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_events_refuse_a_bad_filter(admin_aclient: AsyncClient, log_dir) -> None:  # type: ignore[no-untyped-def]
    resp = await admin_aclient.get("/logs/events/", {"process": "nope"})
    assert resp.status_code == 400


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_report_button_needs_csrf_and_downloads_a_zip(
    admin, write_log: WriteLog, no_worker: str
) -> None:  # type: ignore[no-untyped-def]
    write_log("worker", logging.ERROR, "it broke", exc=boom())
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(admin)
    assert (await client.post("/logs/debug-report/")).status_code == 403  # no token
    page = (await client.get("/logs/")).content.decode()
    token = page.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    resp = await client.post("/logs/debug-report/", {"csrfmiddlewaretoken": token})
    assert resp.status_code == 200 and resp["Content-Type"] == "application/zip"
    assert resp["Content-Disposition"].startswith('attachment; filename="mlxmanager-debug-')
    names = zipfile.ZipFile(io.BytesIO(resp.content)).namelist()
    assert any(n.endswith("/errors.txt") for n in names) and any(
        n.endswith("/logs/worker.log") for n in names
    )
    assert (await client.get("/logs/debug-report/")).status_code == 405
