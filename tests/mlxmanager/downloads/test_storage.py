"""Hub file names joined onto a model folder: only names that stay inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxmanager.downloads import storage


@pytest.mark.parametrize("name", ["config.json", "1_Pooling/config.json", "a/b/c.safetensors", "x..y.json"])
def test_ordinary_names_stay_inside(tmp_path: Path, name: str) -> None:
    assert storage.check_file_name(tmp_path / "m", name) == tmp_path / "m" / name


@pytest.mark.parametrize(
    "name", ["", "..", "../x", "a/../../x", "a/..", "/etc/passwd", "\\etc\\x", "..\\x", "a\0b", "//x"]
)
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(storage.UnsafeFileName):
        storage.check_file_name(tmp_path / "m", name)
    assert not storage.is_safe_file_name(tmp_path / "m", name)


def test_a_symlink_out_of_the_model_folder_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (model / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(storage.UnsafeFileName):
        storage.check_file_name(model, "sub/config.json")
