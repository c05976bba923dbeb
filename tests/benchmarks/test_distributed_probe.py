"""MLX distributed on this machine: two ranks on localhost (ring backend) run the demo model
tensor-sharded with mlx-lm's `sharded_load`, and decode the same text as one process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_two_ranks_decode_the_same_text_as_one_process(demo_models: dict[str, Path]) -> None:
    from tests.test_deployment import launch_command

    probe = str(ROOT / "benchmarks" / "distributed_probe.py")
    out = subprocess.run(
        launch_command(2, probe, str(demo_models["tiny-random"])),
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
