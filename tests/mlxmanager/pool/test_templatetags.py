from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlxmanager.pool.templatetags.mlxm_dashboard import ago, duration

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("delta", "label"),
    [
        (timedelta(seconds=5), "just now"),
        (timedelta(minutes=5, seconds=30), "5 min ago"),
        (timedelta(hours=3), "3 h ago"),
        (timedelta(days=1, hours=2), "1 day ago"),
        (timedelta(days=3), "3 days ago"),
        (timedelta(days=30), "2025-05-02"),
    ],
)
def test_ago(delta: timedelta, label: str) -> None:
    assert ago(NOW - delta, NOW) == label


def test_ago_never() -> None:
    assert ago(None) == "never"


@pytest.mark.parametrize(
    ("seconds", "label"), [(90, "90 s"), (900, "15 min"), (7200, "2 h"), (9000, "2.5 h")]
)
def test_duration(seconds: int, label: str) -> None:
    assert duration(seconds) == label
