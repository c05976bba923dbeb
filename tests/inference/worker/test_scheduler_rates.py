"""The pool chart's tokens/s samples (Scheduler._sample), without MLX: a fake pool of engines."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from inference.worker.scheduler import Scheduler


class FakePool(list[Any]):
    used_bytes = 1234


def engine(name: str, tokens: int) -> Any:
    return SimpleNamespace(spec=SimpleNamespace(name=name), tokens_generated=tokens)


def test_a_model_loaded_and_used_between_samples_counts() -> None:
    pool = FakePool()
    sched = Scheduler(lambda *_: None, pool=pool)  # type: ignore[arg-type]
    sched._rate_mark = (100.0, {})
    pool.append(engine("tiny", 300))  # loaded and used since the last sample
    sched._sample(110.0)
    assert sched._rates == {"tiny": 30.0}
    assert sched.history[-1][1:] == (30.0, 1234)


def test_rates_follow_the_engine_when_its_profile_name_changes() -> None:
    pool = FakePool([engine("a", 100)])
    sched = Scheduler(lambda *_: None, pool=pool)  # type: ignore[arg-type]
    sched._rate_mark = (0.0, {})
    sched._sample(10.0)
    pool[0].spec.name, pool[0].tokens_generated = "b", 150  # another profile on the same weights
    sched._sample(20.0)
    assert sched._rates == {"b": 5.0}  # 50 new tokens, not all 150
    sched._sample(30.0)
    assert sched._rates == {"b": 0.0}
