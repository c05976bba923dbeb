"""Fair turns between users: the queue in front of each model's batch.

A model runs at most `max_concurrent` requests; the rest wait here, one lane per user (or
API key). When a batch row (for a text model, a prefill slot) frees, the next request is chosen by deficit round robin (DRR)
on prompt tokens: the lanes take turns, each turn adds `quantum x weight` tokens of credit
to the lane whose turn it is, and a lane starts its oldest request once its credit covers
that request's prompt. Over time every waiting user gets the same share of prompt tokens
admitted (twice that with weight 2), however many requests they sent: one user's flood
waits behind itself, not in front of everyone else.

Pure Python, no MLX: the scheduler (inference/worker/scheduler.py) owns one `FairQueue`
per model, and `Limits` holds the queue's settings (MLXM_MAX_QUEUE,
MLXM_MAX_USER_CONCURRENT, MLXM_QUEUE_TIMEOUT).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from inference import protocol as p
from inference.env import queue_limits

T = TypeVar("T")

# Tokens of credit per turn (times the lane's weight). Small against any prompt, so a lane's
# turn starts at most one request and lanes interleave as closely as their prompts allow (the
# rounds in which nobody could start anything are credited at once, see `pop`).
QUANTUM = 1
MIN_WEIGHT = 0.01


@dataclass
class Entry(Generic[T]):
    item: T
    cost: int  # prompt tokens
    since: float  # when it was queued (the caller's clock)


@dataclass
class _Lane(Generic[T]):
    entries: deque[Entry[T]] = field(default_factory=deque)
    weight: float = 1.0
    deficit: float = 0.0


def lane_of(req: p.Generate) -> str:
    """Whose turn a request takes: its user's, else its API key's ("" : anonymous)."""
    return req.user or (f"key:{req.key}" if req.key else "")


class FairQueue(Generic[T]):
    """Deficit round robin over lanes (users). `push` appends to a lane, `pop` takes the
    next request in fair order; both are O(lanes) at most."""

    def __init__(self, quantum: int = QUANTUM) -> None:
        if quantum <= 0:
            raise ValueError("quantum must be positive")
        self.quantum = quantum
        self._lanes: dict[str, _Lane[T]] = {}
        self._ring: deque[str] = deque()  # lanes with waiting requests; the first has the turn
        self._credited = False  # whether the first lane got its quantum for this turn
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        for lane in self._lanes.values():
            for e in lane.entries:
                yield e.item

    def count(self, lane: str) -> int:
        found = self._lanes.get(lane)
        return len(found.entries) if found is not None else 0

    def lanes(self) -> dict[str, int]:
        """Waiting requests per lane."""
        return {name: len(lane.entries) for name, lane in self._lanes.items()}

    def push(self, lane: str, item: T, *, cost: int, weight: float = 1.0, now: float = 0.0) -> None:
        """Queue `item` at the end of `lane`; `cost` is its prompt tokens. A lane's weight is
        its latest request's."""
        found = self._lanes.get(lane)
        if found is None:
            found = self._lanes[lane] = _Lane()
            self._ring.append(lane)  # a new lane waits for its turn behind the others
        found.weight = max(MIN_WEIGHT, float(weight))
        found.entries.append(Entry(item, max(1, int(cost)), now))
        self._size += 1

    def pop(self, eligible: Callable[[str], bool] | None = None) -> T | None:
        """The next request in fair order, or None when nothing waits. With `eligible`, only
        lanes it accepts take turns (a user already holding their share of the batch waits
        without gaining credit); None when no waiting lane is eligible."""
        if not self._ring:
            return None
        allowed: set[str] | None = None
        if eligible is not None:
            allowed = {name for name in self._ring if eligible(name)}
            if not allowed:
                return None
            if len(allowed) == len(self._ring):
                allowed = None
        self._skip_idle_rounds(allowed)
        while True:
            name = self._ring[0]
            if allowed is not None and name not in allowed:  # keeps its place and its credit
                self._ring.rotate(-1)
                self._credited = False
                continue
            lane = self._lanes[name]
            if not self._credited:
                lane.deficit += self.quantum * lane.weight
                self._credited = True
            head = lane.entries[0]
            if lane.deficit >= head.cost:
                lane.entries.popleft()
                lane.deficit -= head.cost
                self._size -= 1
                if not lane.entries:
                    self._drop(name)
                return head.item
            # Not enough credit: its turn ends, the next lane's begins.
            self._ring.rotate(-1)
            self._credited = False

    def _skip_idle_rounds(self, allowed: set[str] | None = None) -> None:
        """Add at once the rounds of credit in which no lane could start anything (what DRR
        would do turn by turn), so that `pop` needs at most one pass over the lanes."""
        names = [n for n in self._ring if allowed is None or n in allowed]
        rounds = min(
            math.ceil((lane.entries[0].cost - lane.deficit) / (self.quantum * lane.weight))
            for lane in (self._lanes[n] for n in names)
        )
        if rounds > 1:
            for name in names:
                lane = self._lanes[name]
                lane.deficit += (rounds - 1) * self.quantum * lane.weight

    def _drop(self, name: str) -> None:
        """A lane with nothing left leaves the ring and forgets its credit (as DRR does)."""
        if self._ring and self._ring[0] == name:
            self._ring.popleft()
            self._credited = False
        else:
            self._ring.remove(name)
        del self._lanes[name]

    def remove(self, match: Callable[[T], bool]) -> list[T]:
        """Take out every waiting request `match` selects (aborted, its client gone)."""
        removed: list[T] = []
        for name in list(self._lanes):
            lane = self._lanes[name]
            kept = deque(e for e in lane.entries if not match(e.item))
            if len(kept) == len(lane.entries):
                continue
            removed += [e.item for e in lane.entries if match(e.item)]
            self._size -= len(lane.entries) - len(kept)
            lane.entries = kept
            if not kept:
                self._drop(name)
        return removed

    def expired(self, before: float) -> list[T]:
        """Take out every request queued before `before`."""
        out: list[T] = []
        for name in list(self._lanes):
            lane = self._lanes[name]
            while lane.entries and lane.entries[0].since < before:
                out.append(lane.entries.popleft().item)
                self._size -= 1
            if not lane.entries:
                self._drop(name)
        return out

    def clear(self) -> list[T]:
        items = list(self)
        self._lanes.clear()
        self._ring.clear()
        self._credited = False
        self._size = 0
        return items


@dataclass(frozen=True)
class Limits:
    """The queue's settings; None: no limit.

    max_queue: requests of one model waiting beyond the running ones (0: none may wait).
    max_user: one user's requests to one model, running and waiting together.
    timeout_s: a request waiting longer is refused (503 `queue_timeout`)."""

    max_queue: int | None = None
    max_user: int | None = None
    timeout_s: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        """From MLXM_MAX_QUEUE, MLXM_MAX_USER_CONCURRENT and MLXM_QUEUE_TIMEOUT (ValueError
        naming a bad one)."""
        return cls(*queue_limits(env))


def retry_after(service_s: float | None, ahead: int, slots: int) -> int:
    """Seconds a refused client should wait (at least 1): the requests ahead of it, served
    `slots` at a time, each taking about `service_s` (the model's recent average)."""
    if not service_s:
        return 1
    return max(1, min(3600, math.ceil(service_s * (ahead + 1) / max(1, slots))))
