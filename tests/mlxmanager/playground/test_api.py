"""/api/conversations: session + CSRF, each user's own; others' are 404."""

from __future__ import annotations

import pytest

from mlxmanager.playground.models import Conversation
from tests.mlxmanager.accounts.test_api import ApiClient, assert_problem
from tests.mlxmanager.playground.conftest import TURN

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(member) -> ApiClient:  # type: ignore[no-untyped-def]
    return ApiClient(member)


def patch(api: ApiClient, path: str, body: object):  # type: ignore[no-untyped-def]
    return api.client.patch(path, body, content_type="application/json", headers={"X-CSRFToken": api.csrf})


def delete(api: ApiClient, path: str):  # type: ignore[no-untyped-def]
    return api.client.delete(path, headers={"X-CSRFToken": api.csrf})


def test_save_after_each_turn_then_reopen(api: ApiClient) -> None:
    resp = api.post("/api/conversations", {"profile_name": "tiny", "messages": TURN[:1] + TURN[1:]})
    assert resp.status_code == 201, resp.content
    created = resp.json()
    assert created["title"] == "What is MLX?" and created["messages"][1]["finish_reason"] == "stop"

    more = [*TURN, {"role": "user", "content": "More?"}, {"role": "assistant", "content": "Sure."}]
    resp = patch(api, f"/api/conversations/{created['id']}", {"messages": more})
    assert resp.status_code == 200 and len(resp.json()["messages"]) == 4

    listed = api.get("/api/conversations").json()
    assert [c["id"] for c in listed] == [created["id"]]
    assert "messages" not in listed[0]
    assert api.get(f"/api/conversations/{created['id']}").json()["messages"][-1]["content"] == "Sure."

    assert delete(api, f"/api/conversations/{created['id']}").status_code == 204
    assert api.get("/api/conversations").json() == []


def test_invalid_bodies_are_problems(api: ApiClient) -> None:
    body = assert_problem(
        api.post("/api/conversations", {"profile_name": "tiny", "messages": [{"role": "x"}]}), 400
    )
    assert body["errors"]
    body = assert_problem(api.post("/api/conversations", {"profile_name": "no way!", "messages": TURN}), 400)
    assert body["param"] == "profile_name"


def test_someone_elses_conversation_is_a_404(api: ApiClient, make_user, make_conversation) -> None:  # type: ignore[no-untyped-def]
    theirs = make_conversation(user=make_user())
    assert_problem(api.get(f"/api/conversations/{theirs.pk}"), 404)
    assert_problem(patch(api, f"/api/conversations/{theirs.pk}", {"messages": []}), 404)
    assert_problem(delete(api, f"/api/conversations/{theirs.pk}"), 404)
    assert api.get("/api/conversations").json() == []
    theirs.refresh_from_db()
    assert theirs.messages == TURN


def test_needs_login_and_csrf(api: ApiClient, client) -> None:  # type: ignore[no-untyped-def]
    assert (
        api.post("/api/conversations", {"profile_name": "t", "messages": TURN}, csrf=False).status_code == 403
    )
    assert_problem(client.get("/api/conversations"), 401)
    assert not Conversation.objects.exists()


PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_settings_images_and_timings_are_kept(api: ApiClient) -> None:
    """A reopened chat gets back its settings, the images it sent and each answer's timings."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is this?", "images": [PNG]},
        {
            "role": "assistant",
            "content": "A dot.",
            "finish_reason": "stop",
            "ttft_ms": 41.0,
            "tokens_per_s": 88.5,
        },
    ]
    settings = {"temperature": 0.4, "top_p": 0.9, "max_tokens": 64, "thinking": "off",
                "tools": '[{"type": "function"}]', "tool_choice": "required"}  # fmt: skip
    resp = api.post(
        "/api/conversations", {"profile_name": "eyes", "messages": messages, "settings": settings}
    )
    assert resp.status_code == 201, resp.content
    created = resp.json()
    assert created["settings"] == settings
    assert created["messages"][1]["images"] == [PNG]
    assert created["messages"][2]["ttft_ms"] == 41.0 and created["messages"][2]["tokens_per_s"] == 88.5

    resp = patch(api, f"/api/conversations/{created['id']}", {"settings": {"thinking": "on"}})
    assert resp.status_code == 200
    assert Conversation.objects.get(pk=created["id"]).settings == {"thinking": "on"}
    assert resp.json()["messages"] == created["messages"]  # untouched


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"settings": {"temperature": 5}}, "temperature"),
        ({"settings": {"thinking": "maybe"}}, "thinking"),
        ({"settings": {"colour": "red"}}, "colour"),
        ({"messages": [{"role": "user", "content": "x", "images": ["https://example.com/a.png"]}]}, "images"),
        (
            {
                "messages": [
                    {"role": "user", "content": "x", "images": ["data:text/html;base64,PHNjcmlwdD4="]}
                ]
            },
            "images",
        ),
        ({"messages": [{"role": "user", "content": "x", "images": [PNG] * 5}]}, "images"),
        ({"messages": [{"role": "assistant", "content": "x", "ttft_ms": -1}]}, "ttft_ms"),
    ],
)
def test_bad_settings_and_images_are_problems(api: ApiClient, body: dict, param: str) -> None:
    resp = api.post("/api/conversations", {"profile_name": "tiny", "messages": [], **body})
    problem = assert_problem(resp, 400)
    assert param in str(problem), problem
    assert not Conversation.objects.exists()
