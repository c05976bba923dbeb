"""MLX distributed on this machine: two ranks on localhost (ring backend) run the demo model
tensor-sharded with mlx-lm's `sharded_load`, and decode the same text as one process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow

LAUNCH = Path(sys.executable).parent / "mlx.launch"


@pytest.mark.skipif(not LAUNCH.exists() and not shutil.which("mlx.launch"), reason="mlx.launch not installed")
def test_two_ranks_decode_the_same_text_as_one_process(demo_models: dict[str, Path]) -> None:
    launch = str(LAUNCH) if LAUNCH.exists() else str(shutil.which("mlx.launch"))
    out = subprocess.run(
        [
            launch,
            "--backend",
            "ring",
            "-n",
            "2",
            "--hosts",
            "127.0.0.1",
            "--starting-port",
            str(free_port()),
            "--python",
            sys.executable,
            "--",
            str(ROOT / "benchmarks" / "distributed_probe.py"),
            str(demo_models["tiny-random"]),
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    ranks = sorted(line for line in out.stdout.splitlines() if line.startswith("rank "))
    assert [r.split(":")[0] for r in ranks] == ["rank 0/2", "rank 1/2"]
    assert ranks[0].split(":", 1)[1] == ranks[1].split(":", 1)[1]
    assert "same text: True" in out.stdout
