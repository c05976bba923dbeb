"""Constrained decoding, tool calls and reasoning in the real scheduler on tiny models.

`tiny-random` writes gibberish and `tiny-tools` never picks its markers by itself, so
everything well-formed here comes from the grammar (llguidance) or the thinking budget.
"""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from tokenizers import Tokenizer

from inference import protocol as p
from inference.worker.scheduler import Scheduler

pytestmark = pytest.mark.slow

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "member", "guest"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "active", "tags", "address"],
    "additionalProperties": False,
}
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMS}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"enum": ["UTC", "CET"]}},
                "required": ["zone"],
                "additionalProperties": False,
            },
        },
    },
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
NO_THINKING = {"enable_thinking": False}


class Conn:
    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()


@pytest.fixture(scope="module")
def sched() -> Any:
    s = Scheduler(lambda conn, items: [conn.inbox.put(i) for i in items])
    s.start()
    yield s
    s.stop()
    s.join(timeout=10)


class Result:
    def __init__(self) -> None:
        self.text = ""
        self.reasoning = ""
        self.calls: dict[int, dict[str, Any]] = {}
        self.arg_pieces = 0
        self.final: Any = None

    def add(self, out: p.Output) -> None:
        self.text += out.text
        self.reasoning += out.reasoning
        for tc in out.tool_calls:
            if tc.id is not None:
                self.calls[tc.index] = {"id": tc.id, "name": tc.name, "arguments": ""}
            if tc.arguments:
                self.arg_pieces += 1
            self.calls[tc.index]["arguments"] += tc.arguments

    def call_list(self) -> list[tuple[str, Any]]:
        return [(c["name"], json.loads(c["arguments"])) for _, c in sorted(self.calls.items())]


def run_many(sched: Scheduler, reqs: list[p.Generate], timeout: float = 300) -> dict[str, Result]:
    conn = Conn()
    for r in reqs:
        sched.submit(conn, r)
    results = {r.request_id: Result() for r in reqs}
    done = 0
    deadline = time.monotonic() + timeout
    while done < len(reqs):
        item = conn.inbox.get(timeout=max(0.1, deadline - time.monotonic()))
        res = results[item.request_id]
        if isinstance(item, p.RequestError):
            res.final = item
            done += 1
            continue
        res.add(item)
        if item.finish_reason is not None:
            res.final = item
            done += 1
    return results


def run_one(sched: Scheduler, req: p.Generate) -> Result:
    return run_many(sched, [req])[req.request_id]


def gen(rid: str, path: Path, content: str = "hi", **kw: Any) -> p.Generate:
    sampling = {"max_tokens": 200, "temperature": 1.0, **kw.pop("sampling", {})}
    return p.Generate(
        request_id=rid,
        model=p.ModelSpec(name=path.name, path=str(path)),
        sampling=p.SamplingParams(**sampling),
        messages=[{"role": "user", "content": content}],
        **kw,
    )


def test_json_schema_holds_100_of_100_inside_a_mixed_batch(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["tiny-random"]
    free = [
        gen(f"free{i}", path, f"free text {i}", sampling={"temperature": 0.0, "max_tokens": 40})
        for i in range(4)
    ]
    solo = {r.request_id: run_one(sched, r).text for r in free}
    fmt = {"type": "json_schema", "schema": PERSON}
    constrained = [
        gen(
            f"json{i}",
            path,
            f"a person please #{i}",
            response_format=fmt,
            sampling={"seed": i, "max_tokens": 400},
        )
        for i in range(100)
    ]
    results = run_many(sched, [*constrained, *free])
    for r in constrained:
        res = results[r.request_id]
        assert res.final.finish_reason == "stop", (r.request_id, res.text)
        jsonschema.validate(json.loads(res.text), PERSON)
    # The unconstrained requests of the same batch are untouched by the grammars.
    assert {r.request_id: results[r.request_id].text for r in free} == solo


def test_json_schema_is_reproducible_by_seed_and_json_object_parses(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["tiny-random"]
    fmt = {"type": "json_schema", "schema": PERSON}
    a = run_one(sched, gen("s1", path, response_format=fmt, sampling={"seed": 7, "max_tokens": 400}))
    b = run_one(sched, gen("s2", path, response_format=fmt, sampling={"seed": 7, "max_tokens": 400}))
    assert a.text == b.text
    reqs = [
        gen(
            f"obj{i}", path, response_format={"type": "json_object"}, sampling={"seed": i, "max_tokens": 1500}
        )
        for i in range(10)
    ]
    for res in run_many(sched, reqs).values():
        assert isinstance(json.loads(res.text), dict)


def test_bad_schema_is_a_clean_bad_request(sched: Scheduler, demo_models: dict[str, Path]) -> None:
    bad = {"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}
    res = run_one(sched, gen("bad", demo_models["tiny-random"], response_format=bad))
    assert isinstance(res.final, p.RequestError) and res.final.code == p.ERR_BAD_REQUEST
    assert "constraint" in res.final.message


def test_forced_tool_call_streams_valid_arguments(sched: Scheduler, demo_models: dict[str, Path]) -> None:
    path = demo_models["tiny-tools"]
    reqs = [
        gen(
            f"named{i}",
            path,
            "weather?",
            tools=TOOLS,
            tool_choice="function",
            tool_name="get_weather",
            chat_template_kwargs=NO_THINKING,
            sampling={"seed": i},
        )
        for i in range(10)
    ]
    for res in run_many(sched, reqs).values():
        assert res.final.finish_reason == "tool_calls"
        assert res.text == "" and res.reasoning == ""
        ((name, args),) = res.call_list()
        assert name == "get_weather"
        jsonschema.validate(args, WEATHER_PARAMS)
        assert res.arg_pieces > 3  # the arguments arrived token by token
        assert res.calls[0]["id"].startswith("call_")


def test_required_tool_choice_picks_any_tool_and_parallel_can_be_off(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["tiny-tools"]
    reqs = [
        gen(
            f"req{i}",
            path,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            chat_template_kwargs=NO_THINKING,
            sampling={"seed": i},
        )
        for i in range(10)
    ]
    names = set()
    for res in run_many(sched, reqs).values():
        assert res.final.finish_reason == "tool_calls"
        ((name, args),) = res.call_list()
        jsonschema.validate(args, PARAMS[name])
        names.add(name)
    assert names == {"get_weather", "get_time"}


def test_thinking_budget_ends_reasoning_then_the_answer_follows(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["tiny-tools"]
    res = run_one(sched, gen("think", path, thinking_budget=6, sampling={"max_tokens": 20, "seed": 1}))
    assert res.reasoning and res.text
    assert "<think>" not in res.text + res.reasoning and "</think>" not in res.text + res.reasoning
    assert res.final.finish_reason == "length"
    # Without a budget a tiny model thinks until max_tokens; thinking off means no reasoning.
    res = run_one(sched, gen("long", path, sampling={"max_tokens": 12}))
    assert res.reasoning and not res.text
    res = run_one(sched, gen("off", path, chat_template_kwargs=NO_THINKING, sampling={"max_tokens": 12}))
    assert res.text and not res.reasoning


def test_reasoning_then_forced_tool_call(sched: Scheduler, demo_models: dict[str, Path]) -> None:
    res = run_one(
        sched,
        gen(
            "tt",
            demo_models["tiny-tools"],
            tools=TOOLS,
            tool_choice="required",
            thinking_budget=5,
            parallel_tool_calls=False,  # a tiny model never stops calling by itself
        ),
    )
    assert res.reasoning and res.final.finish_reason == "tool_calls"
    for name, args in res.call_list():
        jsonschema.validate(args, PARAMS[name])


def test_strict_tools_are_constrained_after_the_start_marker(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["tiny-tools"]
    start = Tokenizer.from_file(str(path / "tokenizer.json")).token_to_id("<tool_call>")
    strict = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    # The tiny model never writes <tool_call> by itself: a bias makes it, mid-answer.
    bias = {start: 1005.0}
    reqs = [
        gen(
            f"strict{i}",
            path,
            tools=strict,
            parallel_tool_calls=False,
            chat_template_kwargs=NO_THINKING,
            sampling={"seed": i, "logit_bias": bias},
        )
        for i in range(5)
    ]
    for res in run_many(sched, reqs).values():
        assert res.final.finish_reason == "tool_calls", res.text
        ((name, args),) = res.call_list()
        jsonschema.validate(args, PARAMS[name])


def test_tools_injected_into_the_prompt_of_a_model_without_tool_support(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["tiny-random"]
    plain = run_one(sched, gen("plain", path, "weather?", sampling={"max_tokens": 2}))
    res = run_one(
        sched,
        gen(
            "inj",
            path,
            "weather?",
            tools=TOOLS,
            tool_choice="required",
            tool_parser="prompt",
            parallel_tool_calls=False,
            sampling={"seed": 3},
        ),
    )
    assert res.final.prompt_tokens > plain.final.prompt_tokens + 100  # the tool list is in the prompt
    assert res.final.finish_reason == "tool_calls"
    for name, args in res.call_list():
        jsonschema.validate(args, PARAMS[name])
    # Without a tool format, tools are refused rather than ignored.
    res = run_one(sched, gen("none", path, "weather?", tools=TOOLS))
    assert isinstance(res.final, p.RequestError) and "tool parser" in res.final.message


def test_tool_choice_none_hides_the_tools_and_count_tokens_matches(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["tiny-tools"]
    plain = run_one(sched, gen("p0", path, "x", sampling={"max_tokens": 2}))
    hidden = run_one(sched, gen("p1", path, "x", tools=TOOLS, tool_choice="none", sampling={"max_tokens": 2}))
    shown = run_one(sched, gen("p2", path, "x", tools=TOOLS, sampling={"max_tokens": 2}))
    assert plain.final.prompt_tokens == hidden.final.prompt_tokens < shown.final.prompt_tokens
    conn = Conn()
    ask = p.CountTokens(
        request_id="count",
        model=gen("c", path).model,
        messages=[{"role": "user", "content": "x"}],
        tools=TOOLS,
    )
    sched.submit(conn, ask)
    assert conn.inbox.get(timeout=30).input_tokens == shown.final.prompt_tokens


def test_unknown_named_tool_and_unknown_parser_are_bad_requests(
    sched: Scheduler, demo_models: dict[str, Path]
) -> None:
    path = demo_models["tiny-tools"]
    named = run_one(sched, gen("n", path, tools=TOOLS, tool_choice="function", tool_name="nope"))
    assert isinstance(named.final, p.RequestError) and "nope" in named.final.message
    parser = run_one(sched, gen("q", path, tools=TOOLS, tool_parser="no_such"))
    assert isinstance(parser.final, p.RequestError) and "no_such" in parser.final.message


REAL_CALLS = {
    "json_tools": '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>',
    "prompt": '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>',
    "qwen3_coder": "<tool_call>\n<function=get_time>\n<parameter=zone>\nUTC\n</parameter>\n</function>\n</tool_call>",
    "mistral": '[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "UTC"}}]',
    "mistral_args": '[TOOL_CALLS]get_time[ARGS]{"zone": "UTC"}',
    "llama3_json": '{"name": "get_time", "parameters": {"zone": "UTC"}}',
}


@pytest.mark.parametrize("fmt_name", list(REAL_CALLS))
def test_every_constrained_format_yields_calls_its_parser_reads(
    fmt_name: str, demo_models: dict[str, Path]
) -> None:
    """Each format's grammar accepts the model's real output, and a random walk over the
    allowed tokens always ends in a call that mlx-lm's parser reads and whose arguments
    validate. (The tiny tokenizer stands in; markers that are no token in it are spelled.)"""
    import numpy as np
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from inference.worker import markup as mk
    from inference.worker import structured

    tokenizer = load_tokenizer(demo_models["tiny-tools"])
    if fmt_name == "mistral_args":
        tokenizer._tokenizer.chat_template = "{{ '[TOOL_CALLS]' + name + '[ARGS]' }}"
    grammars = structured.Grammars(tokenizer, vocab_size=512, eos_ids=list(tokenizer.eos_token_ids))
    fmt = mk.tool_format(fmt_name.removesuffix("_args"))
    grammar = structured.tool_call_grammar(grammars, fmt, TOOLS, forced=True, parallel=False)
    matcher = grammars.matcher(grammar)
    assert matcher.consume_tokens(tokenizer.encode(REAL_CALLS[fmt_name])) and matcher.is_accepting()
    wrong = REAL_CALLS[fmt_name].replace("UTC", "PST")
    assert not grammars.matcher(grammar).consume_tokens(tokenizer.encode(wrong))

    markup = mk.Markup(think=None, think_ids=None, tool=fmt)
    rng = np.random.default_rng(0)
    for _ in range(20):
        matcher, ids = grammars.matcher(grammar), []
        while not matcher.is_stopped():
            bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            allowed = [t for t in np.nonzero(bits[:512])[0] if t not in tokenizer.eos_token_ids]
            if not allowed:
                break  # only end-of-sequence is left
            token = int(rng.choice(allowed))
            assert matcher.consume_token(token)
            ids.append(token)
        parser = mk.OutputParser(markup, initial_state="normal", tools=TOOLS)
        deltas = [parser.feed(tokenizer.decode(ids)), parser.finish()]
        assert not "".join(d.text for d in deltas).strip()
        heads = [tc for d in deltas for tc in d.tool_calls if tc.id is not None]
        args = "".join(tc.arguments for d in deltas for tc in d.tool_calls)
        assert len(heads) == 1, tokenizer.decode(ids)
        jsonschema.validate(json.loads(args), PARAMS[heads[0].name or ""])
