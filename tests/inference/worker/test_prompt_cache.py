"""The prompt cache's trie search answers what mlx-lm's does, without its quadratic walk."""

from __future__ import annotations

import random

import mlx.core as mx
from mlx_lm.models.cache import KVCache, PromptTrie

from inference.worker.prompt_cache import PromptCache, _LinearTrie


def _tries(entries: list[list[int]]) -> tuple[PromptTrie, _LinearTrie]:
    theirs, ours = PromptTrie(), _LinearTrie()
    for i, tokens in enumerate(entries):
        theirs.add("m", tokens, i)
        ours.add("m", tokens, i)
    return theirs, ours


def test_search_matches_mlx_lm_on_random_tries() -> None:
    rng = random.Random(7)
    for _ in range(200):
        stem = [rng.randrange(6) for _ in range(rng.randrange(1, 12))]
        entries = [
            stem[: rng.randrange(1, len(stem) + 1)] + [rng.randrange(6) for _ in range(rng.randrange(8))]
        ]
        for _ in range(rng.randrange(1, 6)):
            entries.append(
                stem[: rng.randrange(len(stem) + 1)] + [rng.randrange(6) for _ in range(rng.randrange(1, 8))]
            )
        theirs, ours = _tries(entries)
        for _ in range(10):
            query = stem[: rng.randrange(len(stem) + 1)] + [rng.randrange(6) for _ in range(rng.randrange(6))]
            a, b = theirs.search("m", query), ours.search("m", query)
            assert (a.exact, a.shorter, a.common_prefix) == (b.exact, b.shorter, b.common_prefix), query
            if a.longer is None:
                assert b.longer is None
                continue
            # Both give a shortest cached sequence extending the common prefix (ties may differ).
            assert b.longer is not None and len(b.longer) == len(a.longer)
            assert b.longer[: b.common_prefix] == query[: b.common_prefix]
            assert ours.get("m", b.longer) is not None


def test_unknown_model_and_empty_prompt() -> None:
    theirs, ours = _tries([[1, 2, 3]])
    assert ours.search("other", [1]) == theirs.search("other", [1])
    ours.add("m", [], "root")
    theirs.add("m", [], "root")
    assert ours.search("m", []) == theirs.search("m", [])


def test_a_prompt_leaving_a_long_cached_sequence_reuses_its_common_prefix() -> None:
    """20,000 cached tokens (mlx-lm's search would copy ~200M list items here)."""
    cache = PromptCache(max_size=4)
    kv = KVCache()
    n = 20_000
    kv.update_and_fetch(mx.zeros((1, 1, n, 4)), mx.zeros((1, 1, n, 4)))
    system = list(range(15_000))
    cache.insert_cache("m", [*system, *range(50_000, 55_000)], [kv])
    found, rest = cache.fetch_nearest_cache("m", [*system, 7, 8, 9])
    assert found is not None and found[0].offset == len(system)
    assert rest == [7, 8, 9]


class _Disk:
    def __init__(self) -> None:
        self.saved: list[list[int]] = []

    def save(self, tokens: list[int], cache: list[object]) -> None:
        self.saved.append(tokens)

    def nearest(self, tokens: list[int], better_than: int) -> None:
        return None  # nothing on this disk beats memory


def test_an_entry_goes_to_disk_only_when_asked() -> None:
    disk = _Disk()
    cache = PromptCache(max_size=4, disk=disk)  # type: ignore[arg-type]
    kv = KVCache()
    kv.update_and_fetch(mx.zeros((1, 1, 8, 4)) + 1, mx.zeros((1, 1, 8, 4)))  # lazy: not evaluated yet
    cache.insert_cache("m", list(range(8)), [kv], to_disk=False)  # no room for the writer's copy
    assert disk.saved == []
    found, rest = cache.fetch_nearest_cache("m", list(range(8)))
    assert found is not None and rest == []  # in memory all the same
    cache.insert_cache("m", list(range(9)), [kv])
    assert disk.saved == [list(range(9))]
