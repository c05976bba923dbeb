"""mlx-lm's `LRUPromptCache` with a linear-time prefix search.

When a prompt leaves a cached sequence partway (the same system prompt, another question),
mlx-lm 0.32.2's `PromptTrie.search` looks for the shortest cached sequence below the point
where they part, copying the path at every trie node it visits: quadratic in the cached
sequence's length. Measured in the worker: ~20 ms of the scheduler thread per request with
2,000-token entries (every stream waits meanwhile); an agent's 18,000-token context would
take seconds. This search walks the same trie breadth first, with linked paths (one tuple
per node), and returns the same answer: the exact match, the longest cached prefix, and
the shortest cached extension of the common prefix.
"""

from __future__ import annotations

from typing import Any

from mlx_lm.models.cache import LRUPromptCache, PromptTrie, PromptTrieResult

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
    """`LRUPromptCache` (longest cached prefix, LRU, byte cap) on the linear-time trie."""

    def __init__(self, max_size: int = 10, max_bytes: int = 1 << 63) -> None:
        super().__init__(max_size=max_size, max_bytes=max_bytes)
        self._trie = _LinearTrie()
