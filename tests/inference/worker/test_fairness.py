"""The fair queue alone: deficit round robin on prompt tokens, limits from the environment."""

from __future__ import annotations

from collections import Counter

import pytest

from inference.worker.fairness import FairQueue, Limits, retry_after


def drain(q: FairQueue[str]) -> list[str]:
    out = []
    while (item := q.pop()) is not None:
        out.append(item)
    return out


def test_an_empty_queue_pops_nothing() -> None:
    q: FairQueue[str] = FairQueue()
    assert q.pop() is None and len(q) == 0 and not q


def test_one_lane_keeps_its_order() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(5):
        q.push("a", f"a{i}", cost=100 * (i + 1))
    assert drain(q) == [f"a{i}" for i in range(5)]
    assert len(q) == 0 and q.lanes() == {}


def test_a_late_user_is_not_behind_a_flood() -> None:
    """16 of user a's requests wait; b's one request, queued after them, starts second."""
    q: FairQueue[str] = FairQueue(quantum=32)
    for i in range(16):
        q.push("a", f"a{i}", cost=40)
    q.push("b", "b0", cost=40)
    order = drain(q)
    assert order.index("b0") <= 1
    assert [x for x in order if x.startswith("a")] == [f"a{i}" for i in range(16)]


def test_lanes_not_eligible_wait_without_gaining_credit() -> None:
    """A user holding their share of the batch is skipped (pop gives the next eligible lane's
    request, or None); once eligible again, the turns go on as before."""
    q: FairQueue[str] = FairQueue(quantum=16)
    for i in range(3):
        q.push("a", f"a{i}", cost=50)
    q.push("b", "b0", cost=50)
    assert q.pop(lambda lane: lane == "b") == "b0"
    assert q.pop(lambda lane: lane == "b") is None and len(q) == 3
    q.push("c", "c0", cost=50)
    assert q.pop(lambda lane: lane != "a") == "c0"
    assert drain(q) == ["a0", "a1", "a2"]


def test_equal_prompts_alternate_between_users() -> None:
    q: FairQueue[str] = FairQueue(quantum=16)
    for i in range(4):
        q.push("a", f"a{i}", cost=50)
        q.push("b", f"b{i}", cost=50)
    assert drain(q) == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]


def test_turns_share_prompt_tokens_not_requests() -> None:
    """a's prompts are 10x b's: b starts about ten requests for each of a's."""
    q: FairQueue[str] = FairQueue(quantum=8)
    for i in range(10):
        q.push("a", f"a{i}", cost=1000)
    for i in range(200):
        q.push("b", f"b{i}", cost=100)
    first = [q.pop() for _ in range(44)]
    counts = Counter(x[0] for x in first if x)
    assert counts == {"a": 4, "b": 40}


def test_weight_two_gets_twice_the_tokens() -> None:
    q: FairQueue[str] = FairQueue(quantum=10)
    for i in range(60):
        q.push("member", f"m{i}", cost=30)
        q.push("admin", f"x{i}", cost=30, weight=2)
    first = [q.pop() for _ in range(30)]
    counts = Counter("admin" if x and x[0] == "x" else "member" for x in first)
    assert counts == {"admin": 20, "member": 10}


def test_a_huge_prompt_is_served_without_spinning() -> None:
    """Credit for the rounds in which nobody could start is added at once."""
    q: FairQueue[str] = FairQueue(quantum=1)
    q.push("a", "big", cost=10**9)
    assert q.pop() == "big"


def test_remove_takes_out_matching_requests_and_empty_lanes() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("a", "a0", cost=10)
    q.push("a", "a1", cost=10)
    q.push("b", "b0", cost=10)
    assert q.remove(lambda x: x in {"a1", "b0"}) == ["a1", "b0"]
    assert len(q) == 1 and q.lanes() == {"a": 1} and q.count("b") == 0
    assert drain(q) == ["a0"]


def test_expired_takes_out_the_oldest() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("a", "old", cost=10, now=1.0)
    q.push("a", "new", cost=10, now=5.0)
    q.push("b", "older", cost=10, now=0.5)
    assert sorted(q.expired(before=2.0)) == ["old", "older"]
    assert list(q) == ["new"] and q.lanes() == {"a": 1}


def test_a_lane_that_empties_forgets_its_credit() -> None:
    q: FairQueue[str] = FairQueue(quantum=100)
    q.push("a", "a0", cost=1)
    assert q.pop() == "a0"  # a had 99 tokens of credit left
    q.push("b", "b0", cost=50)
    q.push("a", "a1", cost=50)
    assert drain(q) == ["b0", "a1"]  # b queued first, a starts over behind it


def test_limits_from_the_environment() -> None:
    assert Limits.from_env({}) == Limits()
    env = {"MLXM_MAX_QUEUE": "0", "MLXM_MAX_USER_CONCURRENT": "4", "MLXM_QUEUE_TIMEOUT": "2.5"}
    assert Limits.from_env(env) == Limits(max_queue=0, max_user=4, timeout_s=2.5)
    assert Limits.from_env({"MLXM_QUEUE_TIMEOUT": "0"}).timeout_s is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MLXM_MAX_QUEUE": "lots"}, "MLXM_MAX_QUEUE must be a number"),
        ({"MLXM_MAX_QUEUE": "-1"}, "MLXM_MAX_QUEUE must be 0 or more"),
        ({"MLXM_MAX_USER_CONCURRENT": "0"}, "MLXM_MAX_USER_CONCURRENT must be 1 or more"),
        ({"MLXM_QUEUE_TIMEOUT": "soon"}, "MLXM_QUEUE_TIMEOUT must be a number"),
    ],
)
def test_bad_limits_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits.from_env(env)


def test_retry_after_is_at_least_a_second_and_grows_with_the_queue() -> None:
    assert retry_after(None, ahead=10, slots=2) == 1
    assert retry_after(0.1, ahead=0, slots=4) == 1
    assert retry_after(3.0, ahead=3, slots=2) == 6
