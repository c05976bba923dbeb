"""Settings from the environment shared by the web side and the worker (inference/env.py)."""

from __future__ import annotations

import pytest

from inference import env


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1000000000", 1_000_000_000),
        ("12GB", 12 * 1000**3),
        ("800MB", 800 * 1000**2),
        ("800 mb", 800 * 1000**2),
        ("1.5GiB", int(1.5 * (1 << 30))),
        ("64KiB", 64 << 10),
        ("75%", 750),
        ("12.5%", 125),
    ],
)
def test_sizes_and_percentages(raw: str, expected: int) -> None:
    assert env.parse_size(raw, of=1000) == expected


@pytest.mark.parametrize("raw", ["", "twelve", "12 parsecs", "-5GB", "0%", "150%", "%"])
def test_bad_sizes_are_refused_with_the_setting_named(raw: str) -> None:
    with pytest.raises(ValueError, match="MLXM_MEMORY_LIMIT"):
        env.parse_size(raw, of=1000, name="MLXM_MEMORY_LIMIT")


def test_a_percentage_needs_a_whole() -> None:
    with pytest.raises(ValueError, match="percentage"):
        env.parse_size("50%")


def test_memory_limit_forms() -> None:
    ram = env.physical_memory()
    assert env.memory_limit_from_env({"MLXM_MEMORY_LIMIT": "12GB"}) == 12 * 1000**3
    assert env.memory_limit_from_env({"MLXM_MEMORY_LIMIT": "50%"}) == ram // 2
    # The older name is an alias; the new one wins when both are set.
    assert env.memory_limit_from_env({"MLXM_MEMORY_LIMIT_BYTES": "1000"}) == 1000
    assert env.memory_limit_from_env({"MLXM_MEMORY_LIMIT_BYTES": "1000", "MLXM_MEMORY_LIMIT": "2KB"}) == 2000
    assert env.memory_limit_from_env({}) == int(ram * 0.75)
