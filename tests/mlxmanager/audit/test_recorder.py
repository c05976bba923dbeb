from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from mlxmanager.audit import recorder as rec
from mlxmanager.audit.models import RequestLog

pytestmark = pytest.mark.django_db


def _audit(**kw: Any) -> rec.RequestAudit:
    a = rec.RequestAudit(endpoint="/v1/chat/completions", requested_model="m", **kw)
    a.finish(200)
    return a


def test_recording_is_an_append_with_no_query(django_assert_num_queries: Any) -> None:
    r = rec.Recorder()
    with django_assert_num_queries(0):
        for _ in range(100):
            r.add(_audit())
    assert r.pending() == 100
    assert r.flush() == 100
    assert RequestLog.objects.count() == 100 and r.pending() == 0


def test_flush_writes_every_field_and_tells_listeners() -> None:
    r = rec.Recorder()
    seen: list[list[dict[str, Any]]] = []
    r.listeners.append(seen.append)
    a = rec.RequestAudit(endpoint="/v1/messages", client_ip="10.0.0.1", requested_model="claude", rule="r1",
                         backend="cloud:c", upstream_model="up", stream=True, attempts=2, username="ann")  # fmt: skip
    a.tokens(completion=1, prompt=30, cached=4)
    time.sleep(0.01)
    a.tokens(completion=11, prompt=30, cached=4)
    a.finish(200)
    r.add(a)
    r.flush()
    row = RequestLog.objects.get()
    assert (row.endpoint, row.client_ip, row.requested_model, row.rule, row.backend, row.upstream_model) == (
        "/v1/messages", "10.0.0.1", "claude", "r1", "cloud:c", "up")  # fmt: skip
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.attempts) == (30, 11, 4, 2)
    assert row.ttft_ms is not None and row.ttft_ms <= row.duration_ms
    assert row.tokens_per_s is not None and 0 < row.tokens_per_s < 10 / 0.01 * 1.01
    assert seen[0][0]["requested_model"] == "claude"


def test_timings() -> None:
    a = rec.RequestAudit(endpoint="/v1/x")
    assert a.ttft_ms is None and a.tokens_per_s is None
    a.tokens(completion=1, prompt=5)
    assert a.tokens_per_s is None  # one token: no rate
    a.first_token, a.last_token = a.started + 0.1, a.started + 1.1
    a.completion_tokens = 21
    assert a.ttft_ms == pytest.approx(100) and a.tokens_per_s == pytest.approx(20)
    assert a.finish(200) and not a.finish(500)  # closed once
    assert a.status == 200


def test_a_full_buffer_drops_and_counts(settings: Any) -> None:
    settings.MLXM_AUDIT_MAX_BUFFER = 3
    r = rec.Recorder()
    for _ in range(5):
        r.add(_audit())
    assert r.pending() == 3 and r.dropped == 2


def test_failed_flush_keeps_rows_for_the_next_try(monkeypatch: Any) -> None:
    r = rec.Recorder()
    r.add(_audit())

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("db down")

    monkeypatch.setattr(RequestLog.objects, "bulk_create", boom)
    with pytest.raises(RuntimeError):
        r.flush()
    assert r.pending() == 1
    monkeypatch.undo()
    assert r.flush() == 1


@pytest.mark.django_db(transaction=True)
def test_the_background_thread_flushes(settings: Any) -> None:
    settings.MLXM_AUDIT_FLUSH_INTERVAL = 0.05
    r = rec.Recorder()
    r.add(_audit())
    try:
        # Watch the recorder, not the table: with the in-memory shared-cache test database, a
        # read while the flusher's transaction holds the table fails with "table is locked".
        deadline = time.monotonic() + 5
        while r.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.pending() == 0
    finally:
        r.stop()
    assert r._thread is None
    assert RequestLog.objects.count() == 1


@pytest.mark.asyncio
async def test_track_outputs_counts_tokens_and_closes_the_inner_stream() -> None:
    closed = []

    async def worker():  # type: ignore[no-untyped-def]
        try:
            for i in range(1, 4):
                yield [
                    SimpleNamespace(completion_tokens=i, prompt_tokens=7, cached_tokens=2, finish_reason=None)
                ]
                await asyncio.sleep(0)
        finally:
            closed.append(True)

    a = rec.RequestAudit(endpoint="/v1/x")
    token = rec.activate(a)
    try:
        outputs = rec.track_outputs(worker())
    finally:
        rec.deactivate(token)
    await outputs.__anext__()
    await outputs.__anext__()
    await outputs.aclose()
    assert closed == [True]
    assert (a.completion_tokens, a.prompt_tokens, a.cached_tokens) == (2, 7, 2)
    assert rec.track_outputs(worker()).__class__.__name__ == "async_generator"  # no audit: unwrapped


def test_flush_keeps_the_hourly_rollups_in_step() -> None:
    from mlxmanager.audit.models import RequestHourly

    r = rec.Recorder()
    for status, err in ((200, ""), (200, ""), (500, "upstream_error"), (200, "client_closed")):
        a = rec.RequestAudit(
            endpoint="/v1/chat/completions", requested_model="m", username="ann", backend="local:m"
        )
        a.usage(7, 3, 0)
        a.finish(status, err)
        r.add(a)
    assert r.flush() == 4
    got = {
        (h.status, h.ok): (h.requests, h.prompt_tokens, h.completion_tokens)
        for h in RequestHourly.objects.all()
    }
    assert got == {(200, True): (2, 14, 6), (500, False): (1, 7, 3), (200, False): (1, 7, 3)}


def test_text_that_is_not_valid_unicode_does_not_wedge_the_log() -> None:
    """A refused request's model comes from its raw body: a lone surrogate there ("\\ud800" in
    the JSON) cannot be encoded for the database. The row is written with U+FFFD in its place,
    and the rows around it are not held back by a flush that fails forever."""
    r = rec.Recorder()
    bad = rec.RequestAudit(endpoint="/v1/chat/completions", requested_model="m\ud800x", username="a\udfff")
    bad.finish(400, "invalid_request_error")
    r.add(_audit())
    r.add(bad)
    assert r.flush() == 2 and r.pending() == 0
    assert sorted(RequestLog.objects.values_list("requested_model", flat=True)) == ["m", "m\ufffdx"]
    assert RequestLog.objects.filter(username="a\ufffd").count() == 1
