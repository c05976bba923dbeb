from __future__ import annotations

from pathlib import Path

import pytest

from mlxmanager.errors import Conflict, DomainError
from mlxmanager.profiles.models import Profile
from mlxmanager.profiles.schemas import GenerationDefaults
from mlxmanager.profiles.services import profile_create, profile_delete, profile_update

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(make_model_dir) -> Path:  # type: ignore[no-untyped-def]
    return make_model_dir("qwen")


def test_create_with_every_option(model: Path, make_model_dir) -> None:  # type: ignore[no-untyped-def]
    draft = make_model_dir("draft")
    p = profile_create(
        name="qwen-fast",
        model_path=str(model),
        description="  Fast answers ",
        defaults={"temperature": 0.3, "top_k": 20, "stop": "END", "max_tokens": 100},
        system_prompt="Be brief.",
        context_length=4096,
        chat_template_kwargs={"enable_thinking": False},
        tool_parser="qwen3",
        reasoning_parser="qwen3",
        draft_model_path=str(draft),
        num_draft_tokens=4,
        kv_bits=8,
        pinned=True,
        preload=True,
        keep_alive_seconds=600,
        max_concurrent=8,
    )
    p.refresh_from_db()
    assert p.description == "Fast answers"
    assert p.defaults == {"temperature": 0.3, "top_k": 20, "stop": ["END"], "max_tokens": 100}
    assert p.chat_template_kwargs == {"enable_thinking": False}
    assert (p.kv_bits, p.pinned, p.preload, p.keep_alive_seconds, p.max_concurrent) == (8, True, True, 600, 8)
    assert p.draft_model_path == str(draft)
    assert p.enabled and not p.is_test_model


def test_create_accepts_typed_defaults(model: Path) -> None:
    p = profile_create(name="m", model_path=str(model), defaults=GenerationDefaults(top_p=0.9))
    assert p.defaults == {"top_p": 0.9}


def test_test_model_flag_comes_from_the_models_config(make_model_dir) -> None:  # type: ignore[no-untyped-def]
    tiny = make_model_dir("tiny", config={"mlxmanager": {"test_model": True}})
    assert profile_create(name="tiny", model_path=str(tiny)).is_test_model
    assert not profile_create(name="tiny-off", model_path=str(tiny), is_test_model=False).is_test_model


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"name": "has space"}, "name"),
        ({"name": "dots.are.out"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"model_path": "/does/not/exist"}, "model_path"),
        ({"model_path": "relative/path"}, "model_path"),
        ({"defaults": {"temperature": 3}}, "defaults.temperature"),
        ({"defaults": {"top_p": 0}}, "defaults.top_p"),
        ({"defaults": {"max_tokens": 0}}, "defaults.max_tokens"),
        ({"defaults": {"presence_penalty": -5}}, "defaults.presence_penalty"),
        ({"defaults": {"stop": ["x"] * 17}}, "defaults.stop"),
        ({"defaults": {"n": 2}}, "defaults.n"),
        ({"defaults": {"temperature": "hot"}}, "defaults.temperature"),
        ({"kv_bits": 3}, "kv_bits"),
        ({"num_draft_tokens": 0}, "num_draft_tokens"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": 1000}, "max_concurrent"),
        ({"context_length": 4}, "context_length"),
        ({"keep_alive_seconds": 0}, "keep_alive_seconds"),
        ({"tool_parser": "Not A Parser!"}, "tool_parser"),
        ({"chat_template_kwargs": ["not", "a", "dict"]}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"big": "x" * 5000}}, "chat_template_kwargs"),
        ({"kind": "painting"}, "kind"),
        ({"draft_model_path": "/nope"}, "draft_model_path"),
        ({"pinned": "yes"}, "pinned"),
    ],
)
def test_create_refuses_bad_values_naming_the_field(model: Path, kwargs: dict, param: str) -> None:
    values = {"name": "ok", "model_path": str(model), **kwargs}
    with pytest.raises(DomainError) as exc:
        profile_create(**values)
    assert exc.value.param == param
    assert exc.value.message
    assert not Profile.objects.exists()


def test_a_directory_without_config_is_not_a_model(models_dir: Path) -> None:
    (models_dir / "empty").mkdir()
    with pytest.raises(DomainError, match="no config.json") as exc:
        profile_create(name="x", model_path=str(models_dir / "empty"))
    assert exc.value.param == "model_path"


def test_draft_must_differ_from_the_model(model: Path) -> None:
    with pytest.raises(DomainError) as exc:
        profile_create(name="x", model_path=str(model), draft_model_path=str(model))
    assert exc.value.param == "draft_model_path"


def test_names_are_unique(model: Path) -> None:
    profile_create(name="dup", model_path=str(model))
    with pytest.raises(Conflict) as exc:
        profile_create(name="dup", model_path=str(model))
    assert exc.value.status == 409 and exc.value.param == "name"


def test_one_default_at_a_time(model: Path) -> None:
    a = profile_create(name="a", model_path=str(model), is_default=True)
    b = profile_create(name="b", model_path=str(model), is_default=True)
    a.refresh_from_db()
    assert b.is_default and not a.is_default
    profile_update(profile=a, is_default=True)
    b.refresh_from_db()
    assert not b.is_default


def test_update_changes_only_what_is_given(model: Path, make_model_dir) -> None:  # type: ignore[no-untyped-def]
    p = profile_create(name="a", model_path=str(model), defaults={"temperature": 0.5}, description="d")
    other = make_model_dir("other")
    profile_update(profile=p, name="renamed", model_path=str(other), defaults={"top_p": 0.5})
    p.refresh_from_db()
    assert (p.name, p.model_path, p.defaults, p.description) == ("renamed", str(other), {"top_p": 0.5}, "d")


def test_update_may_keep_its_own_name_but_not_take_another(model: Path) -> None:
    a = profile_create(name="a", model_path=str(model))
    profile_create(name="b", model_path=str(model))
    profile_update(profile=a, name="a")
    with pytest.raises(Conflict):
        profile_update(profile=a, name="b")
    a.refresh_from_db()
    assert a.name == "a"


def test_update_validates_like_create(model: Path) -> None:
    p = profile_create(name="a", model_path=str(model))
    with pytest.raises(DomainError) as exc:
        profile_update(profile=p, defaults={"temperature": -1})
    assert exc.value.param == "defaults.temperature"
    with pytest.raises(DomainError) as exc:
        profile_update(profile=p, kv_bits=2)
    assert exc.value.param == "kv_bits"


def test_clearing_optional_values(model: Path) -> None:
    p = profile_create(name="a", model_path=str(model), kv_bits=4, context_length=100, keep_alive_seconds=5)
    profile_update(profile=p, kv_bits=None, context_length=None, keep_alive_seconds=None)
    p.refresh_from_db()
    assert (p.kv_bits, p.context_length, p.keep_alive_seconds) == (None, None, None)


def test_delete(model: Path) -> None:
    p = profile_create(name="a", model_path=str(model))
    profile_delete(profile=p)
    assert not Profile.objects.exists()


# --- the worker hears about changes after commit --------------------------------


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    calls: list[tuple[str, str]] = []

    async def fake(action, spec):  # type: ignore[no-untyped-def]
        calls.append((action, spec.name))

    monkeypatch.setattr("mlxmanager.pool.services._send_quietly", fake)
    return calls


def test_pinning_a_profile_pins_it_in_the_worker_after_commit(
    model: Path, sent, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    p = profile_create(name="a", model_path=str(model))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        profile_update(profile=p, pinned=True)
    assert len(callbacks) == 1
    assert sent == [("pin", "a")]
    with django_capture_on_commit_callbacks(execute=True):
        profile_update(profile=p, pinned=False)
    assert sent[-1] == ("unpin", "a")


def test_description_changes_leave_the_worker_alone(
    model: Path, sent, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    p = profile_create(name="a", model_path=str(model))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        profile_update(profile=p, description="new words", defaults={"temperature": 1})
    assert callbacks == [] and sent == []


def test_new_weights_or_disabling_unload_the_old_ones(
    model: Path, make_model_dir, sent, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    p = profile_create(name="a", model_path=str(model))
    with django_capture_on_commit_callbacks(execute=True):
        profile_update(profile=p, model_path=str(make_model_dir("v2")))
    assert sent == [("unload", "a")]
    with django_capture_on_commit_callbacks(execute=True):
        profile_update(profile=p, enabled=False)
    assert sent == [("unload", "a"), ("unload", "a")]


def test_deleting_unloads_unless_another_profile_shares_the_weights(
    model: Path, sent, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    a = profile_create(name="a", model_path=str(model))
    b = profile_create(name="b", model_path=str(model), defaults={"temperature": 0})
    with django_capture_on_commit_callbacks(execute=True):
        profile_delete(profile=a)
    assert sent == []  # b still serves these weights
    with django_capture_on_commit_callbacks(execute=True):
        profile_delete(profile=b)
    assert sent == [("unload", "b")]


def test_a_failed_update_sends_nothing(model: Path, sent, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    p = profile_create(name="a", model_path=str(model))
    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(DomainError):
        profile_update(profile=p, pinned=True, kv_bits=3)
    assert callbacks == [] and sent == []


def test_no_worker_is_fine(model: Path, django_capture_on_commit_callbacks, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings.MLXM_WORKER_SOCKET = str(tmp_path / "nobody-listens.sock")
    p = profile_create(name="a", model_path=str(model))
    with django_capture_on_commit_callbacks(execute=True):
        profile_update(profile=p, pinned=True)
        profile_delete(profile=p)
    assert not Profile.objects.exists()


def test_kind_comes_from_the_models_config_not_its_name(tmp_path: Path, model: Path) -> None:
    encoder = tmp_path / "my-chat-model"  # the name says chat; the config says sentence encoder
    encoder.mkdir()
    (encoder / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (encoder / "modules.json").write_text("[]")
    made = profile_create(name="enc", model_path=str(encoder))
    assert made.kind == Profile.KIND_EMBEDDINGS
    with pytest.raises(DomainError) as exc:
        profile_create(name="enc2", model_path=str(encoder), kind=Profile.KIND_LLM)
    assert (
        exc.value.param == "kind" and "an embeddings model (read from its config.json)" in exc.value.message
    )
    with pytest.raises(DomainError) as exc:
        profile_create(name="chat", model_path=str(model), kind=Profile.KIND_EMBEDDINGS)
    assert "a text generation model" in exc.value.message
    vision = tmp_path / "vlm"
    vision.mkdir()
    (vision / "config.json").write_text('{"model_type": "llava", "vision_config": {}, "text_config": {}}')
    assert profile_create(name="vlm", model_path=str(vision)).kind == Profile.KIND_VISION
    with pytest.raises(DomainError) as exc:
        profile_create(name="vlm-as-text", model_path=str(vision), kind=Profile.KIND_LLM)
    assert "a vision model (read from its config.json)" in exc.value.message and exc.value.param == "kind"
    for config, kind in (
        ('{"model_type": "whisper", "num_mel_bins": 80}', Profile.KIND_STT),
        ('{"model_type": "soprano", "architectures": ["SopranoForCausalLM"]}', Profile.KIND_TTS),
    ):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "config.json").write_text(config)
        assert profile_create(name=f"m-{kind}", model_path=str(folder)).kind == kind
