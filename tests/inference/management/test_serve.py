"""`manage.py serve` shuts down gracefully: running streams finish, new requests are refused."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import SERVERS, start_gateway, stop_gateway

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

TINY = "tiny-random"
SMOL = "smollm2-135m-instruct"


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_drains_running_streams(
    server: str, demo_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "MLXM_DRAIN_SECONDS", "15"
    )  # the short stream ends well within it, even on a loaded machine
    gw = start_gateway(tmp_path / "gw", demo_models, server=server)
    try:
        client = gw.openai()
        short = client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": "short"}],
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
        # SmolLM2 (tens of tokens/s here, 8k context) cannot finish this within the drain; its
        # end-of-text tokens are banned so it cannot stop early either.
        endless = client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": "endless"}],
            max_tokens=8000,
            stream=True,
            logit_bias={"0": -100, "1": -100, "2": -100},
        )
        first_short, first_endless = next(iter(short)), next(iter(endless))
        assert first_short.id and first_endless.id

        os.kill(gw.proc.pid, signal.SIGTERM)

        # The endless stream keeps the worker draining; read it on the side until it is cut.
        endless_result: dict[str, object] = {}

        def read_endless() -> None:
            try:
                endless_result["chunks"] = sum(1 for _ in endless)
            except openai.APIError as exc:
                endless_result["error"] = exc

        reader = threading.Thread(target=read_endless)
        reader.start()

        # The short stream runs to its natural end: every token, its usage, a finish reason.
        chunks = [first_short, *short]
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes in (["length"], ["stop"])
        usage = chunks[-1].usage
        assert usage is not None and 0 < usage.completion_tokens <= 20
        if finishes == ["length"]:
            assert usage.completion_tokens == 20

        # While draining (the worker says so on /healthz), a new request gets a clear 503, not a
        # hang or a dropped connection.
        deadline = time.monotonic() + 30
        while not gw.health().json()["worker"].get("draining"):
            assert time.monotonic() < deadline, "the worker never started draining"
            time.sleep(0.05)
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(
                model=TINY, messages=[{"role": "user", "content": "new"}], max_tokens=5
            )
        assert refused.value.status_code == 503
        assert "shutting down" in refused.value.message

        # The drain is bounded: past MLXM_DRAIN_SECONDS the endless stream ends with an error
        # naming the worker, and serve exits cleanly.
        reader.join(timeout=60)
        assert not reader.is_alive()
        assert "shut down before this request finished" in str(endless_result.get("error"))
        assert gw.proc.wait(timeout=60) == 0
    finally:
        stop_gateway(gw)


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


@pytest.mark.parametrize("server", SERVERS)
def test_audit_rows_still_buffered_at_shutdown_are_written(
    server: str, demo_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Request rows wait in the web process's buffer between flushes; a stop must not lose
    them (the web process flushes on its way out: uvicorn at lifespan shutdown, daphne, which
    has no lifespan, in the recorder's atexit handler), and a restarted server finds them."""
    import subprocess
    import sys

    from tests.conftest import ROOT, Gateway, manage

    monkeypatch.setenv("MLXM_AUDIT_FLUSH_INTERVAL", "600")  # nothing flushed during the test
    monkeypatch.setenv("MLXM_SERVER", server)  # the restart below too
    gw = start_gateway(tmp_path / "gw", demo_models)
    env = {**os.environ, "MLXM_DATA_DIR": str(gw.data_dir), "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}
    env.pop("DATABASE_URL", None)
    count = "from mlxmanager.audit.models import RequestLog; print(RequestLog.objects.filter(requested_model='tiny-random').count())"
    try:
        client = gw.openai()
        for i in range(5):
            client.chat.completions.create(
                model=TINY, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=3
            )
        assert last_line(manage("shell", "-c", count, env=env)) == "0"  # still in the buffer
    finally:
        stop_gateway(gw)
    assert gw.proc.returncode == 0
    assert last_line(manage("shell", "-c", count, env=env)) == "5"

    # The same data directory serves again, with the rows and the key intact.
    log = (tmp_path / "serve2.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve"],
        cwd=ROOT,
        env={**env, "MLXM_PORT": gw.url.rsplit(":", 1)[1], "MLXM_LOG_LEVEL": "WARNING"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    again = Gateway(url=gw.url, key=gw.key, data_dir=gw.data_dir, proc=proc, log_path=tmp_path / "serve2.log")
    try:
        again.wait_healthy()
        r = again.openai().chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "back"}], max_tokens=3
        )
        assert r.choices[0].finish_reason in ("length", "stop")
    finally:
        stop_gateway(again)
    assert last_line(manage("shell", "-c", count, env=env)) == "6"
