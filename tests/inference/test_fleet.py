"""Routing across workers (inference/fleet.py): the order a request tries the workers in,
and, on two real worker processes (one on a Unix socket, one over TCP registered as on the
Workers page), a conversation's turns going back to the worker that holds its prefix."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from inference import protocol as p
from inference.affinity import prefix_chain
from inference.client import EngineClient, EngineDeadError
from inference.fleet import WorkerGroup, _State
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"a-long-shared-secret-for-tests-0123"
SPEC = p.ModelSpec(name="m", path="/models/m", max_concurrent=4)


# ---- the choice (no processes: each worker's reported state is set by hand) ------------


def group_of(n: int) -> tuple[WorkerGroup, list[_State]]:
    """The embedded worker plus `n - 1` registered ones, none connected."""
    group = WorkerGroup(EngineClient("/nobody/listens.sock"), secret=SECRET, tls_ca=None)
    for i in range(1, n):
        address = f"tcp://127.0.0.1:{i}"
        group.remote[address] = _State(EngineClient(address, secret=SECRET), f"w{i}")
    states = [group.local, *group.remote.values()]
    for s in states:
        report(s)
    return group, states


def report(state: _State, active: int = 0, queued: int = 0, limit: int = 4) -> None:
    """What `state`'s worker last said about SPEC's model (its health snapshot)."""
    model = {"path": SPEC.path, "active_requests": active, "queued_requests": queued, "max_concurrent": limit}
    state.last = {"models": [model]}
    state.paths = {SPEC.path}
    state.active = active + queued


def conversation(turns: int, system: str = "You are a coding agent.") -> p.Generate:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for i in range(turns):
        if i:
            messages.append({"role": "assistant", "content": f"answer {i}"})
        messages.append({"role": "user", "content": f"question {i}"})
    return p.Generate(request_id="r", model=SPEC, sampling=p.SamplingParams(), messages=messages)


def streaming(state: _State, n: int) -> None:
    """`n` streams of this process running on `state`'s worker, not yet in its report."""
    state.running[SPEC.path] = n
    state.client._queues.update({f"r{i}": asyncio.Queue() for i in range(n)})


def names(states: list[_State]) -> list[str]:
    return [s.name for s in states]


def test_a_follow_up_goes_to_the_worker_that_was_sent_its_start() -> None:
    group, (local, w1, w2) = group_of(3)
    w2.prefixes.remember(prefix_chain(conversation(1)))
    report(local, active=0)
    report(w1, active=1)
    report(w2, active=3)  # the busiest, but below its limit
    assert names(group._order(SPEC, prefix_chain(conversation(3)))) == ["w2", "embedded", "w1"]
    # Nothing in common: least loaded as before.
    other = prefix_chain(conversation(3, system="Another agent."))
    assert names(group._order(SPEC, other)) == ["embedded", "w1", "w2"]
    assert names(group._order(SPEC)) == ["embedded", "w1", "w2"]


def test_the_longest_match_wins_and_equal_matches_go_to_the_less_loaded() -> None:
    group, (local, w1, w2) = group_of(3)
    local.prefixes.remember(prefix_chain(conversation(1)))
    w1.prefixes.remember(prefix_chain(conversation(2)))
    w2.prefixes.remember(prefix_chain(conversation(2)))
    report(w1, active=2)
    report(w2, active=1)
    assert group._order(SPEC, prefix_chain(conversation(3)))[0] is w2
    assert group._order(SPEC, prefix_chain(conversation(1)))[0] is local  # all match 2: least loaded


@pytest.mark.parametrize(
    "overload",
    [
        pytest.param(lambda s: report(s, active=4), id="its slots for the model all taken"),
        pytest.param(lambda s: report(s, active=1, queued=1), id="requests waiting"),
        pytest.param(lambda s: setattr(s, "down_until", time.monotonic() + 60), id="failing"),
        pytest.param(lambda s: streaming(s, 4), id="this process's own streams"),
    ],
)
def test_an_overloaded_holder_is_passed_over_for_the_least_loaded(overload: Any) -> None:
    group, (local, w1, w2) = group_of(3)
    w1.prefixes.remember(prefix_chain(conversation(1)))
    report(local, active=2)
    report(w2, active=1)
    overload(w1)
    order = names(group._order(SPEC, prefix_chain(conversation(2))))
    assert order[:2] == ["w2", "embedded"]


def test_the_worker_reported_limit_wins_over_the_specs() -> None:
    group, (local, w1) = group_of(2)
    w1.prefixes.remember(prefix_chain(conversation(1)))
    report(w1, active=2, limit=2)  # the worker loaded the model with max_concurrent=2
    assert group._order(SPEC, prefix_chain(conversation(2)))[0] is local
    report(w1, active=2, limit=8)
    assert group._order(SPEC, prefix_chain(conversation(2)))[0] is w1


# ---- two real workers ----------------------------------------------------------------------


def spawn_worker(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    data_dir.mkdir()
    env = {**os.environ, "MLXM_DATA_DIR": str(data_dir), "MLXM_LOG_LEVEL": "WARNING",
           "MLXM_WORKER_SECRET": SECRET.decode()}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "inference.worker", "--socket", str(data_dir / "w.sock"), *args],
        cwd=ROOT,
        env=env,
    )


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(the embedded worker's socket, the registered worker's tcp:// address)."""
    port = free_port()
    procs = [
        spawn_worker(tmp_path / "local"),
        spawn_worker(tmp_path / "remote", "--listen", f"127.0.0.1:{port}"),
    ]
    try:
        addresses = (str(tmp_path / "local" / "w.sock"), f"tcp://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for address in addresses:
            while True:
                assert all(proc.poll() is None for proc in procs), "a worker exited"
                try:
                    asyncio.run(probe(address))
                    break
                except EngineDeadError:
                    assert time.monotonic() < deadline, f"no worker at {address}"
                    time.sleep(0.1)
        yield addresses
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)


async def probe(address: str) -> None:
    client = EngineClient(address, secret=SECRET)
    try:
        await client.health(timeout=5)
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def fleet(two_workers: tuple[str, str], demo_models: dict[str, Path]) -> AsyncIterator[Fleet]:
    from asgiref.sync import sync_to_async

    from mlxmanager.workers.services import worker_create

    local, remote = two_workers
    await sync_to_async(worker_create)(name="w2", address=remote)
    group = WorkerGroup(EngineClient(local), secret=SECRET, tls_ca=None)
    spec = p.ModelSpec(name="tiny-random", path=str(demo_models["tiny-random"]), max_concurrent=2)
    try:
        await group._refresh()  # reads the Workers page's rows
        assert set(group.remote) == {remote}
        for _, client in group.clients():  # both hold the model: only the load tells them apart
            await client.pool_command("load", spec)
        await asyncio.gather(*(group._check(s) for s in [group.local, *group.remote.values()]))
        yield Fleet(group, spec)
    finally:
        if group._poller is not None:
            group._poller.cancel()
        for _, client in group.clients():
            await client.aclose()


class Fleet:
    def __init__(self, group: WorkerGroup, spec: p.ModelSpec) -> None:
        self.group, self.spec = group, spec
        self.held: list[Any] = []

    def request(self, messages: list[dict[str, Any]], max_tokens: int = 4) -> p.Generate:
        return p.Generate(
            request_id=os.urandom(8).hex(),
            model=self.spec,
            sampling=p.SamplingParams(max_tokens=max_tokens, temperature=0.0),
            messages=messages,
        )

    async def prompt_tokens(self) -> dict[str, int]:
        """Prompt tokens each worker has admitted so far, by worker name (its health)."""
        seen = {}
        for name, client in self.group.clients():
            health = await client.health(timeout=10)
            seen[name] = sum(m.get("prompt_tokens", 0) for m in health["models"])
        return seen

    async def grown(self, before: dict[str, int]) -> str:
        """The one worker whose admitted prompt tokens grew since `before` (workers refresh
        their health snapshot a few times a second while busy, and at each request's end)."""
        for _ in range(100):
            after = await self.prompt_tokens()
            served = [name for name in after if after[name] > before[name]]
            if served:
                assert len(served) == 1, (before, after)
                return served[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no worker admitted the request: {before}")

    async def ask(self, messages: list[dict[str, Any]]) -> tuple[str, p.Output]:
        """Which worker answered `messages`, and its last output."""
        before = await self.prompt_tokens()
        outs = [o async for batch in self.group.generate(self.request(messages)) for o in batch]
        assert outs[-1].finish_reason == "length"
        return await self.grown(before), outs[-1]

    async def hold(self, messages: list[dict[str, Any]]) -> str:
        """Start a long answer to `messages` and keep it running; which worker has it."""
        before = await self.prompt_tokens()
        stream = self.group.generate(self.request(messages, max_tokens=100_000))
        await stream.__anext__()
        self.held.append(stream)
        return await self.grown(before)

    async def release(self) -> None:
        """End the held answers, and wait until no worker counts them."""
        for stream in self.held:
            await stream.aclose()
        self.held.clear()
        for _, client in self.group.clients():
            for _ in range(200):
                if (await client.health(timeout=10))["active_requests"] == 0:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("a released request still runs")


def chat(system: str, *turns: str) -> list[dict[str, Any]]:
    """A conversation so far: the system prompt, then user and assistant turns alternating."""
    roles = ("user", "assistant")
    return [{"role": "system", "content": system}] + [
        {"role": roles[i % 2], "content": text} for i, text in enumerate(turns)
    ]


X = "You are agent X, a careful reviewer of Python code. " * 12
Y = "You are agent Y, who writes release notes for a gateway. " * 12


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_follow_up_turns_go_back_to_the_worker_that_holds_their_prefix(fleet: Fleet) -> None:
    """Turns of two conversations on two workers: each goes back to its worker however the
    load compares, except to a worker at its limit for the model or that unloaded it."""
    a, x1 = await fleet.ask(chat(X, "review this diff"))
    b = next(name for name, _ in fleet.group.clients() if name != a)

    # A long request of the same conversation goes where its start is: `a` is now busier.
    assert await fleet.hold(chat(X, "review this diff", x1.text, "and the tests")) == a
    # A new conversation goes to the least loaded worker, as before.
    y_name, y1 = await fleet.ask(chat(Y, "notes for 1.2"))
    assert y_name == b
    # X's next turn goes back to `a` though `b` is idle, and its prompt cache serves the prefix.
    served, x2 = await fleet.ask(chat(X, "review this diff", x1.text, "and the docs"))
    assert served == a and x2.cached_tokens > 0, (served, x2)
    await fleet.release()
    # Y's next turn goes back to `b`, now that both are idle.
    served, y2 = await fleet.ask(chat(Y, "notes for 1.2", y1.text, "shorter"))
    assert served == b and y2.cached_tokens > 0, (served, y2)

    # `a` at its limit for the model (max_concurrent=2): X's next turn goes to `b` instead.
    assert await fleet.hold(chat(X, "review this diff", x1.text, "and the tests")) == a
    assert await fleet.hold(chat(X, "review this diff", x1.text, "and the changelog")) == a
    served, _ = await fleet.ask(chat(X, "review this diff", x1.text, "and the docs", x2.text, "thanks"))
    assert served == b
    await fleet.release()

    # `b` unloads the model (its prompt cache goes with it): once its health says so, Y's
    # next turn goes to `a`, which holds the model, rather than to a cold reload on `b`.
    group = fleet.group
    states = {s.name: s for s in [group.local, *group.remote.values()]}
    await states[b].client.pool_command("unload", fleet.spec)
    await asyncio.gather(*(group._check(s) for s in states.values()))
    served, _ = await fleet.ask(chat(Y, "notes for 1.2", y1.text, "shorter", y2.text, "thanks"))
    assert served == a


def test_a_report_taken_during_our_own_burst_does_not_outlive_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's count includes this process's streams: only the other processes' part is
    kept as its load, so once our burst ends the worker is idle again for the next one."""
    group, (local, w1) = group_of(2)
    streaming(local, 6)  # our burst, running on the embedded worker

    async def health(timeout: float = 2.0) -> dict[str, Any]:
        return {"active_requests": 7, "queue_depth": 0, "models": [{"path": SPEC.path}]}  # ours + 1 other

    monkeypatch.setattr(local.client, "health", health)
    asyncio.run(group._check(local))
    assert local.active == 1  # another process's request
    local.running.clear()
    local.client._queues.clear()  # the burst is over; the report is not retaken yet
    report(w1, active=2)
    assert names(group._order(SPEC)) == ["embedded", "w1"]  # 0 + 1 against 0 + 2
