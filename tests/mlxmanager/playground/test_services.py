from __future__ import annotations

import pytest

from mlxmanager.errors import DomainError, NotFound
from mlxmanager.playground.models import Conversation
from mlxmanager.playground.selectors import conversation_get, conversation_list
from mlxmanager.playground.services import (
    conversation_create,
    conversation_delete,
    conversation_update,
    title_from,
)
from tests.mlxmanager.playground.conftest import TURN

pytestmark = pytest.mark.django_db


def test_create_titles_it_after_the_first_question(member) -> None:  # type: ignore[no-untyped-def]
    c = conversation_create(user=member, profile_name="tiny", messages=TURN)
    assert c.title == "What is MLX?"
    assert c.messages[1]["usage"]["completion_tokens"] == 8
    assert c.messages[1]["reasoning"] == "The user asks about MLX."
    assert "reasoning" not in c.messages[0]  # unset fields are not stored


def test_tool_calls_are_kept_with_the_answer(member) -> None:  # type: ignore[no-untyped-def]
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    answer = {"role": "assistant", "content": "", "tool_calls": [call], "finish_reason": "tool_calls"}
    c = conversation_create(user=member, profile_name="tiny-tools", messages=[TURN[0], answer])
    assert c.messages[1]["tool_calls"] == [call]


def test_titles_are_one_short_line() -> None:
    long = {"role": "user", "content": "  first   line\nsecond " + "x" * 100}
    title = title_from([{"role": "system", "content": "sys"}, long])
    assert title.startswith("first line second") and len(title) == 60 and title.endswith("…")
    assert title_from([]) == "New chat"


def test_an_explicit_title_wins(member) -> None:  # type: ignore[no-untyped-def]
    assert conversation_create(user=member, profile_name="t", messages=TURN, title=" Mine ").title == "Mine"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": "x", "html": "<b>"}], "messages[0].html"),
        (
            [TURN[0], {"role": "assistant", "content": "x", "usage": {"prompt_tokens": -1}}],
            "messages[1].usage",
        ),
        ([{"role": "user", "content": "x"}] * 1001, "messages"),
        (
            [TURN[0], {"role": "assistant", "content": "", "tool_calls": [{"arguments": "{}"}]}],
            "messages[1].tool_calls",
        ),
        ("not a list", "messages"),
    ],
)
def test_bad_messages_are_refused(member, messages, param: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DomainError) as exc:
        conversation_create(user=member, profile_name="t", messages=messages)
    assert exc.value.param is not None and exc.value.param.startswith(param)
    assert not Conversation.objects.exists()


def test_bad_profile_name_or_title(member) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DomainError) as exc:
        conversation_create(user=member, profile_name="../etc", messages=TURN)
    assert exc.value.param == "profile_name"
    with pytest.raises(DomainError) as exc:
        conversation_create(user=member, profile_name="t", messages=TURN, title="x" * 201)
    assert exc.value.param == "title"


def test_update_replaces_the_transcript(member, make_conversation) -> None:  # type: ignore[no-untyped-def]
    c = make_conversation(user=member)
    more = [
        *TURN,
        {"role": "user", "content": "And MLX-LM?"},
        {"role": "assistant", "content": "Its LLM library."},
    ]
    conversation_update(conversation=c, messages=more, profile_name="other")
    c.refresh_from_db()
    assert len(c.messages) == 4 and c.profile_name == "other" and c.title == "What is MLX?"
    conversation_update(conversation=c, title="")
    assert c.title == "What is MLX?"  # blank title falls back to the question


def test_users_only_see_their_own(member, make_user, make_conversation) -> None:  # type: ignore[no-untyped-def]
    other = make_user()
    mine = make_conversation(user=member)
    theirs = make_conversation(user=other)
    assert list(conversation_list(user=member)) == [mine]
    assert conversation_get(user=member, conversation_id=mine.pk) == mine
    with pytest.raises(NotFound):
        conversation_get(user=member, conversation_id=theirs.pk)


def test_list_is_newest_first_without_transcripts(
    member, make_conversation, django_assert_num_queries
) -> None:  # type: ignore[no-untyped-def]
    old = make_conversation(user=member, title="old")
    new = make_conversation(user=member, title="new")
    conversation_update(conversation=old, messages=TURN)  # touched: now the newest
    items = list(conversation_list(user=member))
    assert items == [old, new]
    assert "messages" in items[0].get_deferred_fields()


def test_delete(member, make_conversation) -> None:  # type: ignore[no-untyped-def]
    conversation_delete(conversation=make_conversation(user=member))
    assert not Conversation.objects.exists()
