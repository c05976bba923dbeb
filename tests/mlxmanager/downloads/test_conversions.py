"""Conversions for real: `mlx_lm.convert` in a child process, driven by the runner the download
worker ticks, on a small transformers-format checkpoint (the tiny-random llama's float32
safetensors and config, which use the transformers names). No mocks."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from mlxmanager.downloads import conversions, services
from mlxmanager.downloads.models import Conversion

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def checkpoint(demo_models: dict[str, Path], tmp_path: Path) -> Path:
    path = tmp_path / "hf-tiny-llama"
    shutil.copytree(demo_models["tiny-random"], path, ignore=shutil.ignore_patterns(".mlxmanager-*"))
    return path


def run(runner: conversions.ConversionRunner, conversion: Conversion, *, timeout: float = 240) -> Conversion:
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while True:
        runner.tick()
        conversion.refresh_from_db()
        seen.add(conversion.percent)
        if not conversion.is_active:
            conversion.seen = seen  # type: ignore[attr-defined]
            return conversion
        assert time.monotonic() < deadline, f"still {conversion.status} at {conversion.stage}"
        time.sleep(0.1)


def test_convert_and_quantize_a_checkpoint(hub_settings, checkpoint: Path) -> None:
    conversion = services.conversion_create(
        source=str(checkpoint), name="tiny-llama-4bit", q_bits=4, q_group_size=32
    )
    done = run(conversions.ConversionRunner(), conversion)
    assert done.status == Conversion.Status.COMPLETED, done.error
    assert done.percent == 100 and done.finished_at is not None
    assert any(0 < p < 100 for p in done.seen)  # type: ignore[attr-defined]
    output = hub_settings["models"] / "tiny-llama-4bit"
    config = json.loads((output / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert not conversions.scratch_dir(done.pk).exists()  # nothing left behind

    from mlx_lm import generate, load

    model, tokenizer = load(str(output))
    assert isinstance(generate(model, tokenizer, prompt="hello", max_tokens=4), str)

    from mlxmanager.downloads import selectors

    listed = {m.name: m for m in selectors.local_model_list()}
    assert "tiny-llama-4bit" in listed and listed["tiny-llama-4bit"].quantization


def test_a_failing_conversion_reports_why_and_leaves_nothing(hub_settings, checkpoint: Path) -> None:
    (checkpoint / "model.safetensors").write_bytes(b"not a safetensors file")
    conversion = services.conversion_create(source=str(checkpoint), name="broken")
    done = run(conversions.ConversionRunner(), conversion)
    assert done.status == Conversion.Status.FAILED
    assert done.error.startswith("mlx_lm.convert failed (exit ") and len(done.error) > 40
    assert not (hub_settings["models"] / "broken").exists()
    assert not conversions.scratch_dir(done.pk).exists()


def test_cancel_kills_the_child_and_cleans_up(hub_settings, checkpoint: Path) -> None:
    conversion = services.conversion_create(source=str(checkpoint), name="cancelled", q_bits=8)
    runner = conversions.ConversionRunner()
    runner.tick()
    assert runner.job is not None
    child = runner.job.proc
    services.conversion_cancel(conversion_id=conversion.pk)
    runner.tick()
    assert runner.job is None and child.poll() is not None
    conversion.refresh_from_db()
    assert conversion.status == Conversion.Status.CANCELLED
    assert not (hub_settings["models"] / "cancelled").exists()
    assert not conversions.scratch_dir(conversion.pk).exists()


def test_a_conversion_interrupted_by_a_stop_starts_again(hub_settings, checkpoint: Path) -> None:
    conversion = services.conversion_create(source=str(checkpoint), name="again")
    runner = conversions.ConversionRunner()
    runner.tick()
    runner.stop()  # the worker shuts down: the child is killed, the row stays running
    conversion.refresh_from_db()
    assert conversion.status == Conversion.Status.RUNNING
    fresh = conversions.ConversionRunner()
    fresh.recover()
    conversion.refresh_from_db()
    assert conversion.status == Conversion.Status.QUEUED
    done = run(fresh, conversion)
    assert done.status == Conversion.Status.COMPLETED, done.error
    assert (hub_settings["models"] / "again" / "config.json").exists()
