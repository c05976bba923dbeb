from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from mlxmanager.playground.models import Conversation
from mlxmanager.profiles.models import Profile
from tests.mlxmanager.playground.conftest import TURN

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def embedded(html: str) -> dict:
    m = re.search(r'<script id="pg-conversation" type="application/json">(.*?)</script>', html, re.S)
    assert m
    return json.loads(m.group(1))


@pytest.fixture
def profiles() -> None:
    Profile.objects.create(name="alpha", model_path="/m/a", defaults={"temperature": 0.3}, system_prompt="Hi")
    Profile.objects.create(name="main", model_path="/m/m", is_default=True)
    Profile.objects.create(name="off", model_path="/m/o", enabled=False)


def test_needs_login(client: Client) -> None:
    resp = client.get("/playground/")
    assert resp.status_code == 302 and resp["Location"].startswith("/login/")


def test_page_for_a_member(member_client: Client, profiles: None) -> None:
    html = member_client.get("/playground/").content.decode()
    assert 'aria-current="page">Playground' in html
    assert '<option value="main"' in html and '<option value="alpha"' in html
    profile_select = html[
        html.index('id="pg-profile"') : html.index("</select>", html.index('id="pg-profile"'))
    ]
    assert "off" not in re.findall(r'<option value="([^"]+)"', profile_select)  # a disabled profile
    assert re.search(r'<option value="main"[^>]* selected>', html)  # the default profile first
    assert 'data-defaults="{&quot;temperature&quot;: 0.3}"' in html
    assert "/static/js/playground.js" in html
    assert embedded(html) == {"id": None, "messages": [], "settings": {}}
    assert "No saved chats yet." in html
    # The answer renderer's libraries come from our own static files, never a CDN.
    for asset in ("vendor/markdown-it-14.1.0/markdown-it.min.js", "vendor/dompurify-3.2.6/purify.min.js",
                  "vendor/highlight.js-11.11.1/highlight.min.js"):  # fmt: skip
        assert f'src="/static/{asset}"' in html
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_profile_can_be_preselected(member_client: Client, profiles: None) -> None:
    html = member_client.get("/playground/?profile=alpha").content.decode()
    assert re.search(r'<option value="alpha"[^>]* selected>', html)


def test_reopen_a_conversation(member_client: Client, member, profiles: None, make_conversation) -> None:  # type: ignore[no-untyped-def]
    c = make_conversation(user=member, profile_name="alpha")
    c.settings = {"temperature": 0.7, "thinking": "off", "tools": "[]"}
    c.save()
    html = member_client.get(f"/playground/{c.pk}/").content.decode()
    assert embedded(html) == {"id": c.pk, "messages": TURN, "settings": c.settings}
    assert re.search(r'<option value="alpha"[^>]* selected>', html)
    assert 'class="current"' in html and "What is MLX?" in html


def test_a_chat_whose_profile_is_gone_says_so(
    member_client: Client, member, profiles: None, make_conversation
) -> None:  # type: ignore[no-untyped-def]
    c = make_conversation(user=member, profile_name="deleted-one")
    html = member_client.get(f"/playground/{c.pk}/").content.decode()
    assert "deleted-one</code>, which is gone" in html


def test_someone_elses_conversation_is_a_404(member_client: Client, make_user, make_conversation) -> None:  # type: ignore[no-untyped-def]
    theirs = make_conversation(user=make_user())
    assert member_client.get(f"/playground/{theirs.pk}/").status_code == 404
    assert member_client.post(f"/playground/{theirs.pk}/delete/").status_code == 404
    assert Conversation.objects.filter(pk=theirs.pk).exists()
    assert "What is MLX?" not in member_client.get("/playground/").content.decode()


def test_sidebar_partial(member_client: Client, member, make_conversation) -> None:  # type: ignore[no-untyped-def]
    c = make_conversation(user=member)
    html = member_client.get(f"/playground/conversations/?current={c.pk}").content.decode()
    assert html.lstrip().startswith('<nav id="conversation-list"')
    assert 'class="current"' in html and f'value="{c.pk}"' in html


def test_delete_with_htmx(member_client: Client, member, make_conversation) -> None:  # type: ignore[no-untyped-def]
    keep = make_conversation(user=member, title="keep")
    drop = make_conversation(user=member, title="drop")
    resp = member_client.post(f"/playground/{drop.pk}/delete/", {"current": str(keep.pk)}, **HTMX)
    html = resp.content.decode()
    assert resp.status_code == 200 and "keep" in html and "drop" not in html
    # Deleting the chat that is open sends the page back to a new chat.
    resp = member_client.post(f"/playground/{keep.pk}/delete/", {"current": str(keep.pk)}, **HTMX)
    assert resp["HX-Redirect"] == "/playground/"
    assert not Conversation.objects.exists()


def test_delete_without_htmx_redirects(member_client: Client, member, make_conversation) -> None:  # type: ignore[no-untyped-def]
    c = make_conversation(user=member)
    resp = member_client.post(f"/playground/{c.pk}/delete/")
    assert resp.status_code == 302 and resp["Location"] == "/playground/"


def test_page_queries_do_not_grow_with_saved_chats(
    member_client: Client, member, profiles: None, make_conversation, django_assert_max_num_queries
) -> None:  # type: ignore[no-untyped-def]
    for _ in range(25):
        make_conversation(user=member)
    with django_assert_max_num_queries(6):
        assert member_client.get("/playground/").status_code == 200


def test_vision_and_speech_profiles(member_client: Client, profiles: None) -> None:
    """Vision profiles are chat profiles that take images; speech profiles dictate and read aloud."""
    Profile.objects.create(name="eyes", model_path="/m/v", kind=Profile.KIND_VISION)
    Profile.objects.create(name="ears", model_path="/m/s", kind=Profile.KIND_STT)
    Profile.objects.create(name="voice", model_path="/m/t", kind=Profile.KIND_TTS)
    html = member_client.get("/playground/").content.decode()
    assert re.search(r'<option value="eyes" data-kind="vision"', html)
    profile_select = html[
        html.index('id="pg-profile"') : html.index("</select>", html.index('id="pg-profile"'))
    ]
    assert "ears" not in profile_select and "voice" not in profile_select
    assert re.search(r'id="pg-stt"><option value="ears">', html)
    assert re.search(r'id="pg-tts"><option value="voice">', html)


def test_no_speech_controls_without_speech_profiles(member_client: Client, profiles: None) -> None:
    html = member_client.get("/playground/").content.decode()
    assert 'id="pg-stt"' not in html and 'id="pg-tts"' not in html
    assert 'id="pg-attach"' in html  # shown by the script for vision profiles only
