"""Schemathesis against the live server: every operation of `/api` (as a logged-in admin) and
of `/v1` (with an API key), fed schema-generated and schema-breaking input. No answer may be a
5xx. Derandomized, so a run is repeatable; a handful of examples per operation keeps it quick."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
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
