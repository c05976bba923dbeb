"""`python -m inference.worker` as a process: a model served, then SIGTERM, then a clean exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference import protocol as p
from inference.client import EngineClient
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_a_stopped_worker_exits_cleanly_after_serving(demo_models: dict[str, Path], tmp_path: Path) -> None:
    """MLX's threads must not abort the process on its way out (SIGABRT, "terminate called
    without an active exception"): a drained stop exits 0."""
    sock = str(tmp_path / "w.sock")
    env = {
        **os.environ,
        "MLXM_DATA_DIR": str(tmp_path),
        "MLXM_LOG_LEVEL": "WARNING",
        "MLXM_DRAIN_SECONDS": "5",
    }
    proc = subprocess.Popen([sys.executable, "-m", "inference.worker", "--socket", sock], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline, "worker did not start"
            time.sleep(0.05)

        async def generate() -> str:
            client = EngineClient(sock)
            spec = p.ModelSpec(name="tiny-random", path=str(demo_models["tiny-random"]))
            req = p.Generate(request_id="r1", model=spec, sampling=p.SamplingParams(max_tokens=4, temperature=0.0),
                             messages=[{"role": "user", "content": "hi"}])  # fmt: skip
            finish = ""
            async for outs in client.generate(req):
                finish = outs[-1].finish_reason or finish
            return finish

        assert asyncio.run(generate()) in ("length", "stop")  # a model was loaded and ran
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert "terminate called" not in err


def test_a_bad_disk_cache_budget_stops_the_worker_with_a_clear_message(tmp_path: Path) -> None:
    env = {**os.environ, "MLXM_DATA_DIR": str(tmp_path), "MLXM_DISK_CACHE_BYTES": "4GB"}
    proc = subprocess.run([sys.executable, "-m", "inference.worker", "--socket", str(tmp_path / "w.sock")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "MLXM_DISK_CACHE_BYTES must be a whole number of bytes, not '4GB'" in proc.stderr
