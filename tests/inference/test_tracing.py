"""OpenTelemetry traces (mlxmanager/tracing.py): the span tree of a local answer (a real worker
and the tiny model), of a routed call to a fake upstream (which gets the `traceparent`), of a
playground generation; and nothing at all, not even an import, while tracing is off."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from inference import upstream
from inference.client import EngineDeadError, EngineRequestError
from mlxmanager import tracing
from mlxmanager.accounts.services import api_key_create
from mlxmanager.accounts.tokens import token_mint
from mlxmanager.credentials.services import credential_create
from mlxmanager.errors import DomainError, NotFound
from mlxmanager.profiles.models import Profile
from mlxmanager.rules.services import TargetSpec, rule_create
from tests.inference.fakes import FakeUpstream, Step

db = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]
TINY = "tiny-random"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, every span in memory as it ends."""
    exporter = InMemorySpanExporter()
    assert tracing.setup(exporter)
    yield exporter
    tracing.shutdown()


@pytest.fixture
def worker(tmp_path: Path, settings: Any) -> Iterator[str]:
    sock = str(tmp_path / "w.sock")
    env = {**os.environ, "MLXM_DATA_DIR": str(tmp_path), "MLXM_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "inference.worker", "--socket", sock], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "worker did not start"
        time.sleep(0.05)
    settings.MLXM_WORKER_SOCKET = sock
    yield sock
    proc.terminate()
    proc.wait(timeout=20)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    up = FakeUpstream()
    yield up
    await upstream.aclose_clients()  # this test's event loop's pooled connections
    up.close()


async def _member_key(django_user_model: Any) -> tuple[Any, str]:
    user = await django_user_model.objects.acreate(username="member")
    return await sync_to_async(api_key_create)(user=user, name="traced")  # type: ignore[no-any-return]


def _one(found: list[ReadableSpan], name: str, parent: ReadableSpan | None = None) -> ReadableSpan:
    hits = [
        s for s in found if s.name == name and (parent is None or _parent_of(s) == parent.context.span_id)
    ]
    assert len(hits) == 1, (name, [(s.name, _parent_of(s)) for s in found])
    return hits[0]


def _parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _children(found: list[ReadableSpan], parent: ReadableSpan) -> list[str]:
    return sorted(s.name for s in found if _parent_of(s) == parent.context.span_id)


def _at(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None and span.end_time is not None
    return span.start_time, span.end_time


def _request(found: list[ReadableSpan], request_id: str) -> ReadableSpan:
    (span,) = [s for s in found if (s.attributes or {}).get("mlxm.request_id") == request_id]
    return span


@pytest.mark.slow
@db
@pytest.mark.asyncio
async def test_a_local_answer_is_request_route_local_and_the_workers_timings(
    spans: InMemorySpanExporter, worker: str, demo_models: dict[str, Path], django_user_model: Any
) -> None:
    await Profile.objects.acreate(name=TINY, model_path=str(demo_models[TINY]), defaults={})
    key, secret = await _member_key(django_user_model)
    auth = {"Authorization": f"Bearer {secret}", "X-Request-ID": "trace-me-1"}
    body = {"model": TINY, "messages": HI, "max_tokens": 6, "temperature": 0, "stream": True}
    r = await AsyncClient().post("/v1/chat/completions", body, content_type="application/json", headers=auth)
    assert r.status_code == 200 and r["X-Request-ID"] == "trace-me-1"
    assert b"[DONE]" in b"".join([chunk async for chunk in r.streaming_content])

    found = list(spans.get_finished_spans())
    request = _request(found, r["X-Request-ID"])
    assert request.name == "POST /v1/chat/completions" and request.kind == SpanKind.SERVER
    assert request.parent is None
    attrs = dict(request.attributes or {})
    assert attrs["mlxm.surface"] == "chat" and attrs["mlxm.requested_model"] == TINY
    assert attrs["mlxm.key_prefix"] == key.prefix and attrs["mlxm.user_id"] == key.user_id
    assert attrs["mlxm.status"] == 200 and attrs["http.response.status_code"] == 200
    assert secret not in json.dumps([dict(s.attributes or {}) for s in found])
    route = _one(found, "route", request)
    assert dict(route.attributes or {}) == {
        "mlxm.rule": "",
        "mlxm.target": f"local:{TINY}",
        "mlxm.attempts": 1,
    }
    local = _one(found, "local", route)
    assert _children(found, request) == ["route"] and _children(found, route) == ["local"]
    assert _children(found, local) == ["decode", "prefill", "queue_wait"]
    local_attrs = dict(local.attributes or {})
    assert local_attrs["mlxm.finish_reason"] == "length" and local_attrs["gen_ai.usage.output_tokens"] == 6
    assert {s.context.trace_id for s in found} == {request.context.trace_id}
    # In order, one after the other: sent → started in the worker → first token → last token,
    # all inside the local attempt, which ends with the request once the stream has ended.
    queued, prefill, decode = (_at(_one(found, n, local)) for n in ("queue_wait", "prefill", "decode"))
    assert _at(local)[0] <= queued[0] <= queued[1] == prefill[0] <= prefill[1] <= decode[0] + 5_000_000
    assert decode[0] <= decode[1] <= _at(local)[1] == _at(route)[1] == _at(request)[1]

    # A whole (not streamed) answer: the same tree, ended as the response is returned.
    spans.clear()
    body = {"model": TINY, "messages": HI, "max_tokens": 3, "temperature": 0}
    r = await AsyncClient().post("/v1/chat/completions", body, content_type="application/json",
                                 headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert r.status_code == 200
    found = list(spans.get_finished_spans())
    request = _request(found, r["X-Request-ID"])
    local = _one(found, "local", _one(found, "route", request))
    assert _children(found, local) == ["decode", "prefill", "queue_wait"]

    # A client that leaves mid-stream: the request ends as 499, with what the stream had done.
    spans.clear()
    body = {"model": TINY, "messages": HI, "max_tokens": 5000, "temperature": 0, "stream": True}
    r = await AsyncClient().post("/v1/chat/completions", body, content_type="application/json",
                                 headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    content = r.streaming_content
    await content.__anext__()
    await content.aclose()
    del content, r
    request = await _ended(spans, "POST /v1/chat/completions")
    attrs = dict(request.attributes or {})
    assert attrs["mlxm.status"] == 499 and attrs["mlxm.error"] == "client_closed"
    found = list(spans.get_finished_spans())
    local = _one(found, "local", _one(found, "route", request))
    assert _children(found, local) == []  # no final output: no worker timings


async def _ended(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    """The span once it has ended (closing a stream's wrappers completes in later loop turns)."""
    for _ in range(200):
        hits = [s for s in spans.get_finished_spans() if s.name == name]
        if hits:
            (span,) = hits
            return span
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never ended: {[s.name for s in spans.get_finished_spans()]}")


@db
@pytest.mark.asyncio
async def test_a_routed_call_has_upstream_spans_and_sends_traceparent(
    spans: InMemorySpanExporter, fake: FakeUpstream, django_user_model: Any, settings: Any
) -> None:
    settings.MLXM_UPSTREAM_RETRIES = 0
    _, secret = await _member_key(django_user_model)
    await sync_to_async(credential_create)(name="fake-cloud", provider="openai_compatible", secret=fake.key,
                                           base_url=fake.openai_base)  # fmt: skip
    targets = [
        TargetSpec(credential="fake-cloud", model="failing"),
        TargetSpec(credential="fake-cloud", model="up"),
    ]
    await sync_to_async(rule_create)(
        name="to-the-cloud", match_type="exact", pattern="cloudy", targets=targets
    )
    fake.always("failing", Step(status=503))
    r = await AsyncClient().post("/v1/chat/completions", {"model": "cloudy", "messages": HI},
                                 content_type="application/json", headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert r.status_code == 200, r.content
    assert r.json()["choices"][0]["message"]["content"] == "echo: hi"

    found = list(spans.get_finished_spans())
    request = _request(found, r["X-Request-ID"])
    assert request.name == "POST /v1/chat/completions"
    route = _one(found, "route", request)
    assert dict(route.attributes or {}) == {
        "mlxm.rule": "to-the-cloud", "mlxm.target": "cloud:fake-cloud", "mlxm.attempts": 2
    }  # fmt: skip
    failed, answered = sorted((s for s in found if s.name == "upstream"), key=lambda s: _at(s)[0])
    assert _parent_of(failed) == _parent_of(answered) == route.context.span_id
    assert failed.status.status_code == StatusCode.ERROR
    why = dict(failed.attributes or {})
    assert why["mlxm.failure"] == "upstream_error" and why["mlxm.failure_status"] == 503
    assert _at(failed)[1] <= _at(answered)[0]
    attrs = dict(answered.attributes or {})
    assert attrs["mlxm.credential"] == "fake-cloud" and attrs["mlxm.upstream_model"] == "up"
    assert attrs["http.response.status_code"] == 200 and "mlxm.failure" not in attrs
    # Each upstream call carries the traceparent of its own span (W3C: version-trace-span-flags).
    for span, model in ((failed, "failing"), (answered, "up")):
        (call,) = fake.calls(model)
        headers = {k.lower(): v for k, v in call.headers.items()}
        version, trace_id, span_id, _flags = headers["traceparent"].split("-")
        assert version == "00" and int(trace_id, 16) == request.context.trace_id
        assert int(span_id, 16) == span.context.span_id
        assert fake.key not in json.dumps(dict(span.attributes or {}))


@db
@pytest.mark.asyncio
async def test_a_clients_traceparent_is_the_parent_and_failures_are_spans_too(
    spans: InMemorySpanExporter, django_user_model: Any
) -> None:
    _, secret = await _member_key(django_user_model)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = await AsyncClient().post("/v1/chat/completions", {"model": "no-such-model", "messages": HI},
                                 content_type="application/json",
                                 headers={"Authorization": f"Bearer {secret}", "traceparent": parent})  # fmt: skip
    assert r.status_code == 404
    found = list(spans.get_finished_spans())
    request = _request(found, r["X-Request-ID"])
    assert request.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert _parent_of(request) == 0xB7AD6B7169203331
    assert dict(request.attributes or {})["mlxm.status"] == 404
    local = _one(found, "local", _one(found, "route", request))
    failure = dict(local.attributes or {})
    assert failure["mlxm.failure"] == "model_not_found" and failure["mlxm.failure_status"] == 404
    assert local.status.status_code == StatusCode.ERROR
    # Refused before the pipeline: just the request span, named by its route, not its path.
    spans.clear()
    r = await AsyncClient().post("/v1/whatever/the/client/wants", {}, content_type="application/json",
                                 headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    (only,) = spans.get_finished_spans()
    assert only.name == "POST /v1/(unknown)" and dict(only.attributes or {})["mlxm.status"] == r.status_code


@pytest.mark.slow
@db
@pytest.mark.asyncio
async def test_a_playground_generation_is_a_ws_chat_trace(
    spans: InMemorySpanExporter, worker: str, demo_models: dict[str, Path], django_user_model: Any
) -> None:
    from mlxmanager.asgi import application

    await Profile.objects.acreate(name=TINY, model_path=str(demo_models[TINY]), defaults={})
    user = await django_user_model.objects.acreate(username="player")
    comm = WebsocketCommunicator(application, f"/v1/ws/chat?token={token_mint(user_id=user.pk, purpose='ws-chat')}",
                                 headers=[(b"origin", b"http://127.0.0.1")])  # fmt: skip
    connected, _ = await comm.connect(timeout=10)
    assert connected
    await comm.send_json_to(
        {"type": "chat", "id": "a", "body": {"model": TINY, "messages": HI, "max_tokens": 4}}
    )
    while (msg := await comm.receive_json_from(timeout=60))["type"] != "done":
        assert msg["type"] == "delta"
    request = await _ended(spans, "ws.chat")  # the generation's task ends it right after "done"
    await comm.disconnect()
    found = list(spans.get_finished_spans())
    attrs = dict(request.attributes or {})
    assert attrs["mlxm.surface"] == "ws" and attrs["mlxm.user_id"] == user.pk and attrs["mlxm.status"] == 200
    assert attrs["mlxm.request_id"]
    local = _one(found, "local", _one(found, "route", request))
    assert _children(found, local) == ["decode", "prefill", "queue_wait"]


@db
@pytest.mark.asyncio
async def test_tracing_off_makes_no_trace(django_user_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not tracing.ENABLED

    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("a trace was made while tracing is off")

    monkeypatch.setattr(tracing.RequestTrace, "__init__", refuse)
    _, secret = await _member_key(django_user_model)
    r = await AsyncClient().post("/v1/chat/completions", {"model": "no-such-model", "messages": HI},
                                 content_type="application/json", headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert r.status_code == 404 and tracing.current() is None


def test_tracing_off_imports_no_opentelemetry(tmp_path: Path) -> None:
    """Without OTEL_* the web process never imports OpenTelemetry (nor builds the middleware)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(MLXM_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="mlxmanager.settings")
    script = """
import asyncio, json, sys
import mlxmanager.asgi  # sets up tracing (or not) and builds both middleware chains
import inference.consumers, inference.pipeline, inference.upstream
from django.core.exceptions import MiddlewareNotUsed
from mlxmanager import tracing

async def view(request): ...
try:
    tracing.tracing_middleware(view)
    used = True
except MiddlewareNotUsed:
    used = False
print(json.dumps({"enabled": tracing.ENABLED, "middleware": used,
                  "otel": sorted(m for m in sys.modules if m.startswith("opentelemetry"))}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "enabled": False,
        "middleware": False,
        "otel": [],
    }


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_the_otel_variables_turn_it_on(env: dict[str, str], wanted: list[str]) -> None:
    assert tracing.exporters_wanted(env) == wanted


def test_setup_from_the_environment_names_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing is sent in this test
    monkeypatch.setattr("opentelemetry.trace.set_tracer_provider", lambda provider: None)  # once per process
    try:
        assert tracing.setup(environ=os.environ)
        assert tracing._provider.resource.attributes["service.name"] == "mlx-manager"
    finally:
        tracing.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    try:
        assert tracing.setup(environ=os.environ)
        assert tracing._provider.resource.attributes["service.name"] == "gateway-eu"
    finally:
        tracing.shutdown()
    assert not tracing.ENABLED


@pytest.mark.parametrize(
    ("exc", "named"),
    [
        (upstream.UpstreamFailure("x", kind="rate_limited", status=429), ("rate_limited", 429)),
        (EngineRequestError("overloaded", "busy"), ("overloaded", None)),
        (EngineDeadError("gone"), ("worker_unavailable", None)),
        (TimeoutError(), ("timeout", None)),
        (NotFound("no such model", param="model"), ("model_not_found", 404)),
        (DomainError("bad", param="temperature"), ("invalid_request", 400)),
        (asyncio.CancelledError(), ("cancelled", None)),
    ],
)
def test_a_failed_attempt_is_named_as_the_client_sees_it(
    exc: BaseException, named: tuple[str, int | None]
) -> None:
    assert tracing._failure(exc) == named
