"""LLMEngine's prefill slicing: how many prompt tokens one step may take while others decode."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from inference import protocol as p
from inference.worker.adapters import llm


@pytest.fixture
def engine(demo_models: dict[str, Path]) -> Any:
    e = llm.LLMEngine(p.ModelSpec(name="tiny-random", path=str(demo_models["tiny-random"])))
    yield e
    e._by_uid = {}  # the tests' stand-in rows are not in the batch
    e.close()


def _rows(engine: Any, *completion_tokens: int) -> None:
    engine._by_uid = {i: SimpleNamespace(completion_tokens=n) for i, n in enumerate(completion_tokens)}


def test_full_chunks_until_a_rate_is_known_or_when_nobody_decodes(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm, "PREFILL_SLICE_S", 1.0)
    _rows(engine, 5, 0)
    assert engine._prefill_step() == llm.PREFILL_STEP  # no rate measured yet
    engine._prefill_rate = 100.0
    _rows(engine, 0, 0)
    assert engine._prefill_step() == llm.PREFILL_STEP  # nobody waits for tokens


def test_a_slice_takes_about_the_budget_shared_by_the_prompts_prefilling(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm, "PREFILL_SLICE_S", 1.0)
    engine._prefill_rate = 200.0  # tokens/s
    _rows(engine, 7, 0)
    assert engine._prefill_step() == 200
    _rows(engine, 7, 3, 0, 0)
    assert engine._prefill_step() == 100  # two prompts share the slice
    engine._prefill_rate = 10.0
    assert engine._prefill_step() == llm.PREFILL_MIN_STEP
    engine._prefill_rate = 1e6
    assert engine._prefill_step() == llm.PREFILL_STEP
    monkeypatch.setattr(llm, "PREFILL_SLICE_S", 0.0)  # MLXM_PREFILL_SLICE_MS=0: always full chunks
    engine._prefill_rate = 10.0
    assert engine._prefill_step() == llm.PREFILL_STEP
