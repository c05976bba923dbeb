from __future__ import annotations

from pathlib import Path

import pytest

from mlxmanager.errors import NotFound
from mlxmanager.profiles.models import Profile
from mlxmanager.profiles.selectors import local_model_dirs, profile_get, profile_list

pytestmark = pytest.mark.django_db


def test_local_models_are_dirs_with_a_config(make_model_dir, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    make_model_dir("mlx-community--Qwen3-4B-4bit")
    make_model_dir("b-model")
    (models_dir / "not-a-model").mkdir()
    (models_dir / "stray.txt").write_text("x")
    partial = make_model_dir("still-downloading")
    (partial / ".mlxm-download").mkdir()
    found = local_model_dirs()
    assert [m.label for m in found] == ["b-model", "mlx-community/Qwen3-4B-4bit"]
    assert found[0].path == str(models_dir / "b-model")


def test_local_models_include_the_ones_profiles_use_elsewhere(make_model_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inside = make_model_dir("inside")
    elsewhere = tmp_path / "elsewhere" / "demo"
    elsewhere.mkdir(parents=True)
    (elsewhere / "config.json").write_text("{}")
    Profile.objects.create(name="a", model_path=str(inside))
    Profile.objects.create(name="b", model_path=str(elsewhere))
    Profile.objects.create(name="c", model_path=str(elsewhere))
    Profile.objects.create(name="gone", model_path=str(tmp_path / "deleted"))
    found = {m.label: m for m in local_model_dirs()}
    assert set(found) == {"inside", "demo"}
    assert found["demo"].used_by == ["b", "c"]
    assert found["inside"].used_by == ["a"]


def test_missing_models_dir_is_empty(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.MLXM_MODELS_DIR = tmp_path / "nope"
    assert local_model_dirs() == []


def test_list_puts_the_default_first_and_get_finds_by_name_or_id() -> None:
    Profile.objects.create(name="b", model_path="/m")
    Profile.objects.create(name="z", model_path="/m", is_default=True)
    Profile.objects.create(name="a", model_path="/m", enabled=False)
    assert [p.name for p in profile_list()] == ["z", "a", "b"]
    assert profile_get(name="b").name == "b"
    assert profile_get(pk=profile_get(name="a").pk).name == "a"
    with pytest.raises(NotFound):
        profile_get(name="missing")
