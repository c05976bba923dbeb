"""mlx-lm's `LRUPromptCache` with a linear-time prefix search.

When a prompt leaves a cached sequence partway (the same system prompt, another question),
mlx-lm 0.32.2's `PromptTrie.search` looks for the shortest cached sequence below the point
where they part, copying the path at every trie node it visits: quadratic in the cached
sequence's length. Measured in the worker: ~20 ms of the scheduler thread per request with
2,000-token entries (every stream waits meanwhile); an agent's 18,000-token context would
take seconds. This search walks the same trie breadth first, with linked paths (one tuple
per node), and returns the same answer: the exact match, the longest cached prefix, and
the shortest cached extension of the common prefix.

With a disk tier (`disk_cache.ModelDisk`), every entry stored is written through to disk,
and a lookup whose longest prefix on disk beats the memory tier's loads it from there (it
is then in memory too). `count_hit` keeps memory and disk hits apart.
"""

from __future__ import annotations

import copy
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import (
    LRUPromptCache,
    PromptTrie,
    PromptTrieResult,
    can_trim_prompt_cache,
    trim_prompt_cache,
)

_VALUE = "__value__"  # PromptTrie's key for a node's entry


def _unlink(path: tuple[Any, ...]) -> list[int]:
    """Tokens of a linked path ((token, (token, (... ())))), root first."""
    tokens: list[int] = []
    while path:
        tok, path = path
        tokens.append(tok)
    tokens.reverse()
    return tokens


def _nearest_value(node: dict[Any, Any]) -> list[int] | None:
    """Tokens from `node` down to the closest node holding an entry (breadth first)."""
    frontier: list[tuple[dict[Any, Any], tuple[Any, ...]]] = [(node, ())]
    while frontier:
        deeper = []
        for current, path in frontier:
            if _VALUE in current:
                return _unlink(path)
            deeper += [(child, (tok, path)) for tok, child in current.items() if tok != _VALUE]
        frontier = deeper
    return None  # not reached: PromptTrie.pop prunes branches left without entries


class _LinearTrie(PromptTrie):
    def search(self, model: Any, tokens: list[int]) -> PromptTrieResult:
        trie = self._trie.get(model)
        if trie is None:
            return PromptTrieResult(model, None, None, None, 0)
        if not tokens and _VALUE in trie:
            return PromptTrieResult(model, [], None, None, 0)
        current, last_index, index = trie, -1, 0
        while index < len(tokens) and tokens[index] in current:
            current = current[tokens[index]]
            if _VALUE in current:
                last_index = index
            index += 1
        if last_index == len(tokens) - 1 >= 0:
            return PromptTrieResult(model, tokens, None, None, 0)
        shorter = tokens[: last_index + 1] if last_index > 0 else None
        below = _nearest_value(current) if index > 0 else None
        longer = None if below is None else tokens[:index] + below
        return PromptTrieResult(model, None, shorter, longer, index)


class PromptCache(LRUPromptCache):
    """`LRUPromptCache` (longest cached prefix, LRU, byte cap) on the linear-time trie, with
    an optional disk tier behind it."""

    def __init__(self, max_size: int = 10, max_bytes: int = 1 << 63, disk: Any = None) -> None:
        super().__init__(max_size=max_size, max_bytes=max_bytes)
        self._trie = _LinearTrie()
        self.disk = disk  # a disk_cache.ModelDisk, or None
        self.memory_hit_tokens = 0
        self.disk_hit_tokens = 0
        self._last_from_disk = False

    def fetch_nearest_cache(self, model: Any, tokens: list[int]) -> tuple[list[Any] | None, list[int]]:
        cache, rest = super().fetch_nearest_cache(model, tokens)
        self._last_from_disk = False
        if self.disk is None:
            return cache, rest
        found = self.disk.nearest(tokens, better_than=len(tokens) - len(rest))
        loaded = None if found is None else self.disk.load(found[0])
        if loaded is None:
            return cache, rest
        entry_cache, entry_tokens = loaded
        usable = found[1]  # type: ignore[index]
        if usable < len(entry_tokens) and not can_trim_prompt_cache(entry_cache):
            return cache, rest
        # In memory from now on (already on disk: not written again).
        super().insert_cache(model, entry_tokens, entry_cache)
        disk_cache = copy.deepcopy(entry_cache)
        if usable < len(entry_tokens):
            trim_prompt_cache(disk_cache, len(entry_tokens) - usable)
        self._last_from_disk = True
        return disk_cache, tokens[usable:]

    def insert_cache(
        self,
        model: Any,
        tokens: list[int],
        prompt_cache: list[Any],
        *,
        cache_type: str = "assistant",
        to_disk: bool = True,
    ) -> None:
        # A finished row's cache leaves the batch as lazy slices of the batch's buffers: left
        # unevaluated, an entry keeps every row's KV of that moment alive long after the batch
        # has moved on (measured in the team benchmark's (i): ~80 MB more than the caches
        # counted). Evaluated here, it holds its own row only.
        mx.eval([c.state for c in prompt_cache])
        super().insert_cache(model, tokens, prompt_cache, cache_type=cache_type)
        if self.disk is not None and to_disk:
            self.disk.save(tokens, prompt_cache)

    def count_hit(self, cached_tokens: int) -> None:
        """Count the prefix the last `fetch_nearest_cache` served, by the tier it came from."""
        if self._last_from_disk:
            self.disk_hit_tokens += cached_tokens
        else:
            self.memory_hit_tokens += cached_tokens

    def disk_stats(self) -> tuple[int, int]:
        """Entries and bytes of this model on disk (0, 0 without a disk tier)."""
        return (0, 0) if self.disk is None else self.disk.stats()
