"""Prefix keys (inference/affinity.py): what a request's chain is, and what a worker's bounded
memory of them answers."""

from __future__ import annotations

from typing import Any

from inference import protocol as p
from inference.affinity import PROMPT_BLOCK_CHARS, PrefixMemory, prefix_chain

SYSTEM = {"role": "system", "content": "You are a coding agent. " * 50}
TOOLS = [{"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}]


def gen(messages: list[dict[str, Any]] | None = None, *, path: str = "/models/a", **kw: Any) -> p.Generate:
    return p.Generate(
        request_id="r",
        model=p.ModelSpec(name="a", path=path),
        sampling=p.SamplingParams(),
        messages=messages,
        **kw,
    )


def turn(n: int) -> list[dict[str, Any]]:
    """The messages of a conversation's `n`-th request (1-based): system, then turns."""
    out: list[dict[str, Any]] = [SYSTEM]
    for i in range(n):
        out.append({"role": "user", "content": f"question {i}"})
        if i < n - 1:
            out.append({"role": "assistant", "content": f"answer {i}"})
    return out


def test_a_follow_up_turn_extends_the_earlier_turns_chain() -> None:
    first, second, third = (prefix_chain(gen(turn(n), tools=TOOLS)) for n in (1, 2, 3))
    assert len(first) == 2 and len(second) == 4 and len(third) == 6
    assert second[:2] == first and third[:4] == second
    assert len(set(third)) == 6  # each element stands for a longer prefix
    assert prefix_chain(gen(turn(2), tools=TOOLS)) == second  # the same request, the same keys


def test_model_tools_and_template_options_are_part_of_every_key() -> None:
    base = prefix_chain(gen(turn(2), tools=TOOLS))
    for other in (
        gen(turn(2), tools=TOOLS, path="/models/b"),
        gen(turn(2)),
        gen(turn(2), tools=[{"type": "function", "function": {"name": "write"}}]),
        gen(turn(2), tools=TOOLS, chat_template_kwargs={"enable_thinking": False}),
    ):
        assert not set(prefix_chain(other)) & set(base)


def test_conversations_share_keys_only_as_far_as_their_messages_agree() -> None:
    a = prefix_chain(gen([SYSTEM, {"role": "user", "content": "one"}]))
    b = prefix_chain(gen([SYSTEM, {"role": "user", "content": "two"}]))
    c = prefix_chain(gen([{"role": "system", "content": "other"}, {"role": "user", "content": "one"}]))
    assert a[0] == b[0] and a[1] != b[1]
    assert not set(c) & set(a)
    # A message's other fields count (a tool result is not a user turn).
    d = prefix_chain(gen([SYSTEM, {"role": "tool", "content": "one", "tool_call_id": "x"}]))
    assert d[0] == a[0] and d[1] != a[1]


def test_structured_content_is_keyed_by_its_json() -> None:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "look"}, {"type": "image", "index": 0}]
    a = prefix_chain(gen([{"role": "user", "content": parts}]))
    same = prefix_chain(gen([{"role": "user", "content": [dict(x) for x in parts]}]))
    other = prefix_chain(gen([{"role": "user", "content": parts[:1]}]))
    assert a == same and a != other


def test_a_raw_prompt_is_keyed_in_blocks() -> None:
    text = "x" * (PROMPT_BLOCK_CHARS * 2) + "tail"
    chain = prefix_chain(gen(prompt=text))
    longer = prefix_chain(gen(prompt=text + " and more"))
    assert len(chain) == 3 and longer[:2] == chain[:2] and longer[2] != chain[2]
    assert prefix_chain(gen(prompt="")) == [] and prefix_chain(gen([])) == []


def test_memory_matches_the_longest_leading_run_it_holds() -> None:
    mem = PrefixMemory()
    first = prefix_chain(gen(turn(1)))
    mem.remember(first)
    assert mem.match(prefix_chain(gen(turn(3)))) == 2
    assert mem.match(first) == 2
    assert mem.match(prefix_chain(gen([{"role": "user", "content": "unrelated"}]))) == 0
    assert mem.match([]) == 0


def test_memory_is_bounded_and_drops_the_least_recently_used() -> None:
    mem = PrefixMemory(capacity=4)
    mem.remember([1, 2])
    mem.remember([3, 4])
    mem.remember([1, 2])  # used again: now the most recent
    mem.remember([5, 6])
    assert len(mem) == 4
    assert mem.match([1, 2]) == 2 and mem.match([5, 6]) == 2
    assert mem.match([3]) == 0 and mem.match([4]) == 0


def test_memory_forgets_what_a_restarted_worker_held() -> None:
    mem = PrefixMemory()
    mem.remember([1, 2], owner=100)
    assert mem.match([1, 2], owner=100) == 2
    assert mem.match([1, 2], owner=101) == 0  # another process now: its cache is empty
    mem.remember([3], owner=101)
    assert mem.match([1, 2], owner=101) == 0 and mem.match([3], owner=101) == 1
    mem.clear()
    assert mem.match([3], owner=101) == 0 and len(mem) == 0


def test_content_that_cant_be_keyed_gives_no_chain() -> None:
    assert prefix_chain(gen([{"role": "user", "content": [object()]}])) == []
