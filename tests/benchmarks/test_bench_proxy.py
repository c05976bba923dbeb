"""bench_proxy's report: added latency is paired against the direct call of the same round,
and the target is judged on it (no processes, no timing assertions)."""

from __future__ import annotations

from benchmarks import bench_proxy


def _rounds(direct: float, n: int = 5, **paths: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, added in {"direct": 0.0, **paths}.items():
        for s in ("", "_stream"):
            if s and name.endswith("hello"):
                continue
            out[name + s] = [
                direct + added + i for i in range(n)
            ]  # drifting rounds: pairing removes the drift
    return out


def _data(floor: float, gateway: float) -> dict[str, object]:
    stacks = {label: 0.5 + i for i, (label, _, _) in enumerate(bench_proxy.STACKS)}
    return {
        "results": _rounds(1.0, floor=floor, gateway=gateway),
        "stacks": _rounds(2.0, **stacks),
        "rows": 10,
    }


def test_report_pairs_rounds_and_judges_the_target() -> None:
    text = bench_proxy.report(_data(2.5, 3.5), 5, ["--requests", "5"], ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)))
    assert "| JSON (non-streaming) | ≤ 2 ms | 3.50 ms | not met | 2.50 ms |" in text
    assert "`.venv/bin/python benchmarks/bench_proxy.py --requests 5`" in text
    assert "before 0.10/0.20/0.30, after 0.40/0.50/0.60" in text
    # The stack comparison is paired against its own phase's direct calls.
    assert "| uvicorn: proxy with aiohttp (the floor's stack) | 0.50 | 0.50 |" in text
    assert "| daphne: fixed answer, no upstream | 5.50 |  |" in text

    met = bench_proxy.report(_data(1.0, 1.5), 5, [], ((0, 0, 0), (0, 0, 0)))
    assert "| SSE stream (to the last byte) | ≤ 2 ms | 1.50 ms | **met** | 1.00 ms |" in met
