"""bench_proxy's report: added latency is paired against the direct call of the same round,
and the target is judged on it (no processes, no timing assertions)."""

from __future__ import annotations

from benchmarks import bench_proxy


def _results(direct: float, floor: float, gateway: float, n: int = 5) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for s in ("", "_stream"):
        out["direct" + s] = [direct + i for i in range(n)]  # drifting rounds: pairing removes the drift
        out["proxy" + s] = [direct + floor + i for i in range(n)]
        out["gateway" + s] = [direct + gateway + i for i in range(n)]
    out["hello"] = [direct + 0.5 + i for i in range(n)]
    return out


def test_report_pairs_rounds_and_judges_the_target() -> None:
    text = bench_proxy.report({"results": _results(1.0, 2.5, 3.5), "rows": 10}, 5, ["--requests", "5"],
                              ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)))  # fmt: skip
    assert "| JSON (non-streaming) | ≤ 2 ms | 3.50 ms | not met | 2.50 ms |" in text
    assert "`.venv/bin/python benchmarks/bench_proxy.py --requests 5`" in text
    assert "+0.50 ms against the direct call" in text
    assert "before 0.10/0.20/0.30, after 0.40/0.50/0.60" in text

    met = bench_proxy.report({"results": _results(1.0, 1.0, 1.5), "rows": 10}, 5, [], ((0, 0, 0), (0, 0, 0)))
    assert "| SSE stream (to the last byte) | ≤ 2 ms | 1.50 ms | **met** | 1.00 ms |" in met
