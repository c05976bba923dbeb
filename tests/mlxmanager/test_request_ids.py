"""The request id in log lines: a real /v1 request's line in the web process's file carries it."""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from inference import logsetup
from mlxmanager.logs import selectors


@pytest.fixture
def web_log(tmp_path: Path) -> Iterator[Path]:
    """The logging a web process started by `serve` has (settings.LOGGING with MLXM_LOG_PROCESS
    set), in a temporary data dir; the test run's own comes back after."""
    config = logsetup.logging_config(
        "web", base=tmp_path, request_id_filter="mlxmanager.request_ids.RequestIdFilter", console=False
    )
    logging.config.dictConfig({**config, "loggers": settings.LOGGING["loggers"]})
    yield tmp_path / "logs" / "web.log"
    logging.config.dictConfig(settings.LOGGING)


def _request(rid: str) -> None:
    resp = Client().post(
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
        headers={"Authorization": "Bearer mlxm-not-a-key", "X-Request-ID": rid},
    )
    assert resp.status_code == 401 and resp["X-Request-ID"] == rid


@pytest.mark.django_db
def test_a_v1_requests_log_line_has_its_request_id(web_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLXM_LOG_FORMAT", raising=False)
    _request("rid-in-the-log-1")
    for h in logging.getLogger().handlers:
        h.flush()
    line = next(x for x in web_log.read_text().splitlines() if "/v1/chat/completions" in x)
    assert (
        " WARNING web[" in line
        and " django.request [rid-in-the-log-1]: Unauthorized: /v1/chat/completions" in line
    )
    (record,) = selectors.parse([line], "web")
    assert record.request_id == "rid-in-the-log-1"


@pytest.mark.django_db
def test_and_in_json_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXM_LOG_FORMAT", "json")
    config = logsetup.logging_config(
        "web", base=tmp_path, request_id_filter="mlxmanager.request_ids.RequestIdFilter", console=False
    )
    logging.config.dictConfig({**config, "loggers": settings.LOGGING["loggers"]})
    try:
        _request("rid-json-2")
        for h in logging.getLogger().handlers:
            h.flush()
    finally:
        logging.config.dictConfig(settings.LOGGING)
    lines = [json.loads(x) for x in (tmp_path / "logs" / "web.log").read_text().splitlines()]
    hit = next(x for x in lines if x["logger"] == "django.request")
    assert hit["request_id"] == "rid-json-2" and hit["process"] == "web" and hit["level"] == "WARNING"
