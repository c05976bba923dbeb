from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from mlxmanager.profiles.models import Profile

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def model(make_model_dir) -> Path:  # type: ignore[no-untyped-def]
    return make_model_dir("mlx-community--Qwen3-0.6B-4bit")


def form_data(model: Path, **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "qwen-small",
        "model_choice": str(model),
        "model_path_other": "",
        "kind": "llm",
        "description": "A small one",
        "enabled": "on",
        "temperature": "0.6",
        "top_p": "0.95",
        "max_tokens": "512",
        "stop": "<|end|>\n\nSTOP\n",
        "system_prompt": "You are terse.",
        "chat_template_kwargs": '{"enable_thinking": false}',
        "draft_choice": "",
        "num_draft_tokens": "3",
        "kv_bits": "8",
        "max_concurrent": "16",
        "pinned": "on",
        "keep_alive_seconds": "900",
        "prompt_cache_bytes": "1.5GB",
    }
    data.update(overrides)
    return data


def test_list_shows_badges_and_admin_actions(admin_client: Client, model: Path) -> None:
    Profile.objects.create(name="tiny", model_path=str(model), is_test_model=True, pinned=True, preload=True)
    Profile.objects.create(name="off", model_path=str(model), enabled=False)
    html = admin_client.get("/profiles/").content.decode()
    assert "<h1>Profiles</h1>" in html
    assert 'badge warn">test model' in html
    assert 'badge">pinned' in html and 'badge">preload' in html
    assert "disabled" in html
    assert "mlx-community--Qwen3-0.6B-4bit" in html
    assert "/profiles/new/" in html and "Edit" in html and "Delete" in html
    assert 'aria-current="page">Profiles' in html


def test_members_see_profiles_without_admin_actions(member_client: Client, model: Path) -> None:
    p = Profile.objects.create(name="tiny", model_path=str(model))
    html = member_client.get("/profiles/").content.decode()
    assert "tiny" in html and "Chat" in html
    assert "/profiles/new/" not in html and f"/profiles/{p.pk}/edit/" not in html
    assert member_client.get("/profiles/new/").status_code == 403
    assert member_client.get(f"/profiles/{p.pk}/edit/").status_code == 403
    assert member_client.post(f"/profiles/{p.pk}/delete/").status_code == 403
    assert Profile.objects.filter(pk=p.pk).exists()


def test_pages_need_login(client: Client) -> None:
    for path in ("/profiles/", "/profiles/new/"):
        resp = client.get(path)
        assert resp.status_code == 302 and resp["Location"].startswith("/login/")


def test_form_offers_local_models_in_grouped_sections(admin_client: Client, model: Path) -> None:
    html = admin_client.get("/profiles/new/").content.decode()
    for legend in ("Model", "Generation defaults", "Prompt &amp; template", "Engine", "Pool"):
        assert f"<legend>{legend}</legend>" in html
    assert f'<option value="{model}">mlx-community/Qwen3-0.6B-4bit' in html
    assert 'name="model_path_other"' in html  # free text beside the picker
    assert 'name="temperature"' in html and 'max="2"' in html


def test_create_through_the_form(admin_client: Client, model: Path) -> None:
    resp = admin_client.post("/profiles/new/", form_data(model))
    assert resp.status_code == 302 and resp["Location"] == "/profiles/"
    p = Profile.objects.get(name="qwen-small")
    assert p.model_path == str(model)
    assert p.defaults == {"temperature": 0.6, "top_p": 0.95, "max_tokens": 512, "stop": ["<|end|>", "STOP"]}
    assert p.chat_template_kwargs == {"enable_thinking": False}
    assert (p.kv_bits, p.max_concurrent, p.pinned, p.preload, p.keep_alive_seconds) == (
        8,
        16,
        True,
        False,
        900,
    )
    assert p.system_prompt == "You are terse." and p.enabled
    assert p.prompt_cache_bytes == 1_500_000_000
    assert "Created profile qwen-small." in admin_client.get("/profiles/").content.decode()


def test_free_text_path_wins_over_the_picker(admin_client: Client, model: Path, tmp_path: Path) -> None:
    other = tmp_path / "outside"
    other.mkdir()
    (other / "config.json").write_text("{}")
    resp = admin_client.post("/profiles/new/", form_data(model, model_path_other=str(other)))
    assert resp.status_code == 302
    assert Profile.objects.get().model_path == str(other)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "no spaces please"}, "letters, digits"),
        ({"model_choice": "", "model_path_other": "/not/here"}, "does not exist"),
        ({"model_choice": ""}, "choose a model directory"),
        ({"temperature": "7"}, "less than or equal to 2"),
        ({"chat_template_kwargs": "{not json"}, "not valid JSON"),
        ({"chat_template_kwargs": "[1]"}, "JSON object"),
        ({"max_concurrent": "0"}, "between 1 and 256"),
        ({"prompt_cache_bytes": "a lot"}, "is not a size like"),
    ],
)
def test_form_errors_are_shown_beside_the_field(
    admin_client: Client, model: Path, overrides: dict, message: str
) -> None:
    resp = admin_client.post("/profiles/new/", form_data(model, **overrides))
    assert resp.status_code == 400
    html = resp.content.decode()
    assert 'class="field has-error' in html
    assert message in html.replace("&#x27;", "'")
    assert not Profile.objects.exists()


def test_edit_prefills_and_saves(admin_client: Client, model: Path) -> None:
    p = Profile.objects.create(
        name="qwen", model_path=str(model), defaults={"temperature": 0.4, "stop": ["A", "B"]}, kv_bits=4
    )
    html = admin_client.get(f"/profiles/{p.pk}/edit/").content.decode()
    assert 'value="qwen"' in html and 'value="0.4"' in html
    assert f'<option value="{model}" selected>' in html
    assert '<option value="4" selected>' in html
    assert "A\nB</textarea>" in html
    resp = admin_client.post(f"/profiles/{p.pk}/edit/", form_data(model, name="qwen", kv_bits=""))
    assert resp.status_code == 302
    p.refresh_from_db()
    assert p.kv_bits is None and p.defaults["temperature"] == 0.6


def test_edit_missing_profile_is_404(admin_client: Client) -> None:
    assert admin_client.get("/profiles/999/edit/").status_code == 404


def test_delete_asks_first_then_deletes(admin_client: Client, model: Path) -> None:
    p = Profile.objects.create(name="gone-soon", model_path=str(model))
    html = admin_client.get(f"/profiles/{p.pk}/delete/").content.decode()
    assert "Delete gone-soon?" in html and Profile.objects.exists()
    resp = admin_client.post(f"/profiles/{p.pk}/delete/")
    assert resp.status_code == 302 and not Profile.objects.exists()


def test_delete_with_htmx_returns_the_table(admin_client: Client, model: Path) -> None:
    p = Profile.objects.create(name="gone-soon", model_path=str(model))
    Profile.objects.create(name="stays", model_path=str(model))
    resp = admin_client.post(f"/profiles/{p.pk}/delete/", **HTMX)
    html = resp.content.decode()
    assert 'id="profiles-table"' in html and "<html" not in html
    assert "stays" in html and "gone-soon" not in html


@pytest.mark.parametrize("htmx", [False, True], ids=["page", "htmx"])
def test_list_queries_do_not_grow_with_the_number_of_profiles(
    admin_client: Client, model: Path, htmx: bool
) -> None:
    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get("/profiles/", **(HTMX if htmx else {})).status_code == 200
        return len(ctx.captured_queries)

    Profile.objects.create(name="p0", model_path=str(model))
    one = count()
    assert one <= 5
    for i in range(1, 25):
        Profile.objects.create(name=f"p{i}", model_path=str(model), pinned=i % 2 == 0, defaults={"top_k": i})
    assert count() == one


def test_members_are_not_shown_the_model_path_or_system_prompt(
    member_client: Client,
    admin,
    model: Path,  # type: ignore[no-untyped-def]
) -> None:
    Profile.objects.create(name="tiny", model_path=str(model), system_prompt="SECRET-SYSTEM-PROMPT")
    html = member_client.get("/profiles/").content.decode()
    assert "tiny" in html and str(model) not in html and "SECRET-SYSTEM-PROMPT" not in html
    boss = Client()
    boss.force_login(admin)
    assert str(model) in boss.get("/profiles/").content.decode()


# --- "Create profile" from a model folder (Local models, Downloads, Discover) -----------


QWEN_CONFIG = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "max_position_embeddings": 40960,
    "quantization": {"group_size": 64, "bits": 4},
}


def test_create_form_is_prefilled_from_the_models_config(admin_client: Client, make_model_dir) -> None:  # type: ignore[no-untyped-def]
    path = make_model_dir("mlx-community--Qwen3-0.6B-4bit", config=QWEN_CONFIG)
    html = admin_client.get("/profiles/new/", {"path": str(path)}).content.decode()
    assert f'<option value="{path}" selected>' in html  # a known local model: picked in the list
    assert 'name="name" value="qwen3-0-6b-4bit"' in html
    assert '<option value="llm" selected>' in html
    assert 'name="context_length" value="40960"' in html
    # Submitting it as prefilled creates the profile.
    resp = admin_client.post(
        "/profiles/new/",
        form_data(path, name="qwen3-0-6b-4bit", kind="llm", context_length="40960", kv_bits="", pinned=""),
    )
    assert resp.status_code == 302, resp.content.decode()[-2000:]
    profile = Profile.objects.get(name="qwen3-0-6b-4bit")
    assert profile.model_path == str(path) and profile.context_length == 40960


def test_prefill_detects_other_kinds_and_avoids_taken_names(
    admin_client: Client, make_model_dir, model: Path
) -> None:  # type: ignore[no-untyped-def]
    Profile.objects.create(name="whisper-tiny", model_path=str(model))
    whisper = make_model_dir(
        "mlx-community--whisper-tiny",
        config={"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]},
    )
    html = admin_client.get("/profiles/new/", {"path": str(whisper)}).content.decode()
    assert '<option value="stt" selected>' in html and 'name="name" value="whisper-tiny-2"' in html


def test_prefill_with_a_folder_outside_the_models_dir(admin_client: Client, tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere" / "My Model"
    folder.mkdir(parents=True)
    html = admin_client.get("/profiles/new/", {"path": str(folder)}).content.decode()
    assert f'name="model_path_other" value="{folder}"' in html and 'name="name" value="my-model"' in html
    assert '<option value="" selected>Detect from the model' in html  # no config.json: nothing guessed
    resp = admin_client.post(
        "/profiles/new/", form_data(folder, name="my-model", model_choice="", model_path_other=str(folder))
    )
    assert resp.status_code == 400 and "config.json" in resp.content.decode()
