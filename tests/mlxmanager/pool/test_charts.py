from __future__ import annotations

from mlxmanager.pool.charts import HEIGHT, WIDTH, history_charts

NOW = 1_700_000_000.0
MB = 1 << 20


def xs(points: str) -> list[float]:
    return [float(p.split(",")[0]) for p in points.split()]


def test_no_history_gives_empty_charts() -> None:
    rate, memory = history_charts([], now=NOW)
    assert rate.empty and memory.empty
    assert rate.now_label == "—"
    assert memory.top_label == "1.0 MB"


def test_points_span_the_last_hour() -> None:
    history = [(NOW - 3600, 0.0, 0), (NOW - 1800, 50.0, 512 * MB), (NOW, 100.0, 1024 * MB)]
    rate, memory = history_charts(history, now=NOW)
    assert xs(rate.line) == [0.0, WIDTH / 2, WIDTH]
    ys = [float(p.split(",")[1]) for p in memory.line.split()]
    assert ys[0] == HEIGHT and 2.0 < ys[-1] < 10  # the peak, under a little headroom
    assert rate.now_label == "100.0 tok/s" and memory.now_label == "1024.0 MB"
    assert memory.top_label == "1.1 GB"
    assert rate.top_label == "110 tok/s"  # peak plus headroom
    assert rate.since_label == "1 h ago"
    assert rate.area.startswith(f"0.0,{HEIGHT}") and rate.area.endswith(f"{WIDTH:.1f},{HEIGHT}")


def test_samples_older_than_an_hour_are_dropped() -> None:
    history = [(NOW - 7200, 5.0, MB), (NOW - 60, 1.0, MB), (NOW, 2.0, MB)]
    rate, _ = history_charts(history, now=NOW)
    assert len(rate.line.split()) == 2


def test_a_young_worker_gets_a_shorter_window_and_a_point_for_now() -> None:
    rate, memory = history_charts([(NOW - 300, 4.0, MB)], now=NOW, current=(8.0, 2 * MB))
    assert xs(rate.line) == [0.0, WIDTH]  # five minutes fill the width
    assert rate.since_label == "5 min ago"
    assert rate.now_label == "8.0 tok/s" and memory.now_label == "2.0 MB"
    # Never narrower than a minute, so a fresh sample doesn't jump across the chart.
    rate, _ = history_charts([(NOW - 10, 1.0, MB)], now=NOW, current=(1.0, MB))
    assert rate.since_label == "1 min ago" and xs(rate.line)[0] > WIDTH * 0.8
