"""Schemathesis against the live server: every operation of `/api` (as a logged-in admin) and
of `/v1` (with an API key), fed schema-generated and schema-breaking input. No answer may be a
5xx. Derandomized, so a run is repeatable; a handful of examples per operation keeps it quick.

Schemathesis never generates invalid Unicode (it leaves lone surrogates out on purpose: they
cannot be encoded as UTF-8), yet JSON carries them as `"\\ud800"`. A second pass takes valid
bodies of each JSON operation and sets each of their string fields in turn to a string with a
lone surrogate: every such body must be refused with a 400."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Gateway, start_gateway, stop_gateway

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fuzz")]

FUZZ = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
# Positive examples whose string fields the invalid-Unicode pass breaks, one field at a time.
EXAMPLES = settings(FUZZ, max_examples=8, phases=[Phase.generate])
SURROGATE = "ok\ud800ok"  # sent as the JSON escape `"ok\\ud800ok"`
# Operations left out of the invalid-Unicode pass (none: every body model checks it).
INVALID_UNICODE_GAPS: set[str] = set()
# Bodies that name a served model reach the worker instead of stopping at "no such model".
SERVED = {"/v1/embeddings": "all-minilm-l6-v2"}
CHAT = "tiny-random"


@pytest.fixture(scope="module")
def live(demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("fuzz"), demo_models)
    try:
        admin = admin_session(gw)
        # Short answers: the fuzzer asks for huge max_tokens; the cap turns those into 400s.
        r = admin.patch(
            f"{gw.url}/api/profiles/{CHAT}",
            json={"max_output_tokens": 8},
            headers={"X-CSRFToken": admin.cookies["csrftoken"]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        yield gw
    finally:
        stop_gateway(gw)


def admin_session(gw: Gateway) -> requests.Session:
    s = requests.Session()
    s.get(f"{gw.url}/login/", timeout=30)
    r = s.post(
        f"{gw.url}/login/",
        data={
            "username": "admin",
            "password": "correct-horse-battery",
            "csrfmiddlewaretoken": s.cookies["csrftoken"],
        },
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 302
    return s


def fuzz(schema_url: str, call: Callable[[Any], Any]) -> int:
    """Run `call` on generated cases of every operation, valid and invalid ones; returns how
    many operations were fuzzed. Each operation's failure is reported with its example."""
    schema = schemathesis.openapi.from_url(schema_url)
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                call(case)

            try:
                run()
            except Unsatisfiable:
                continue  # nothing to break (e.g. no parameters in negative mode)
            except Exception as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    return operations


def test_api_never_answers_5xx(live: Gateway) -> None:
    admin = admin_session(live)

    def call(case: Any) -> None:
        case.call_and_validate(
            base_url=live.url,
            session=admin,
            headers={"X-CSRFToken": admin.cookies["csrftoken"]},
            checks=[not_a_server_error],
            timeout=60,
        )

    assert fuzz(f"{live.url}/api/openapi.json", call) > 30


def test_v1_never_answers_5xx(live: Gateway) -> None:
    def call(case: Any) -> None:
        body = case.body
        # Half the examples (decided by the body itself, so runs repeat) name a served model.
        if (
            isinstance(body, dict)
            and "model" in body
            and zlib.crc32(repr(sorted(body.items(), key=str)).encode()) % 2 == 0
        ):
            body["model"] = SERVED.get(case.path, CHAT)
        case.call_and_validate(
            base_url=live.url,
            headers={"Authorization": f"Bearer {live.key}", "x-api-key": live.key},
            checks=[not_a_server_error],
            timeout=120,
        )

    assert fuzz(f"{live.url}/v1/openapi.json", call) >= 7


Loc = tuple[str | int, ...]


def string_fields(value: Any, loc: Loc = ()) -> Iterator[Loc]:
    """The location of each string in a JSON value."""
    if isinstance(value, str):
        yield loc
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from string_fields(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from string_fields(v, (*loc, i))


def with_value(body: Any, loc: Loc, value: Any) -> Any:
    out = deepcopy(body)
    *parent, last = loc
    target = out
    for key in parent:
        target = target[key]
    target[last] = value
    return out


def bad_bodies(cases: list[Any]) -> Iterator[tuple[Any, Any]]:
    """(case, body): each distinct string field of the cases' bodies (list items count once)
    set to a string with a lone surrogate, and one object key that holds one."""
    seen: set[Loc] = set()
    for case in cases:
        body = case.body
        if isinstance(body, dict) and not seen:
            yield case, {**body, SURROGATE: 1}
        for loc in string_fields(body):
            shape = tuple("*" if isinstance(x, int) else x for x in loc)
            if shape not in seen:
                seen.add(shape)
                yield case, with_value(body, loc, SURROGATE)


def json_examples(operation: Any) -> list[Any]:
    """A few schema-valid cases of an operation whose body is JSON (none otherwise)."""
    cases: list[Any] = []

    @EXAMPLES
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def collect(case: Any) -> None:
        if case.media_type == "application/json" and isinstance(case.body, dict | list):
            cases.append(case)

    try:
        collect()
    except Unsatisfiable:
        return []
    return cases


def sweep_invalid_unicode(
    base_url: str, schema_path: str, session: requests.Session, headers: dict[str, str]
) -> int:
    """For each operation with a JSON body: a few valid bodies, broken by `bad_bodies`, each
    sent (by hand: schemathesis re-validates a changed body, which cannot be encoded) and
    answered with a 400 that says the text is invalid Unicode. Returns how many were sent."""
    schema = schemathesis.openapi.from_url(base_url + schema_path)
    failures, sent = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in INVALID_UNICODE_GAPS:
            continue
        for case, bad in bad_bodies(json_examples(operation)):
            query = case.query if isinstance(case.query, dict) else None
            url = base_url + case.formatted_path
            response = session.request(case.method, url, params=query, json=bad, headers=headers, timeout=60)
            sent += 1
            if response.status_code != 400 or "invalid Unicode" not in response.text:
                failures.append(
                    f"{operation.label}: {response.status_code} {response.text[:300]}\n"
                    f"  body: {json.dumps(bad)[:300]}"
                )
                break  # one report per operation
    assert not failures, "\n\n".join(failures)
    return sent


def test_api_refuses_invalid_unicode_in_every_string_field(live: Gateway) -> None:
    admin = admin_session(live)
    headers = {"X-CSRFToken": admin.cookies["csrftoken"]}
    assert sweep_invalid_unicode(live.url, "/api/openapi.json", admin, headers) > 20


def test_v1_refuses_invalid_unicode_in_every_string_field(live: Gateway) -> None:
    headers = {"Authorization": f"Bearer {live.key}", "x-api-key": live.key}
    assert sweep_invalid_unicode(live.url, "/v1/openapi.json", requests.Session(), headers) > 20
