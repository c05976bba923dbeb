"""Fixtures for the profile tests: users (from the accounts tests) and model directories."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.mlxmanager.accounts.conftest import (  # noqa: F401  (fixtures)
    _fast_password_hashing,
    admin,
    make_user,
    member,
    member_client,
)

ModelDirFactory = Callable[..., Path]


@pytest.fixture
def models_dir(tmp_path: Path, settings: Any) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    settings.MLXM_MODELS_DIR = root
    return root


@pytest.fixture
def make_model_dir(models_dir: Path) -> ModelDirFactory:
    """`make_model_dir(name, config={...})`: a directory that looks like an MLX model."""

    def make(name: str = "model", config: dict[str, Any] | None = None) -> Path:
        path = models_dir / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
        return path

    return make


@pytest.fixture
def admin_client(client: Client, admin) -> Client:  # type: ignore[no-untyped-def]  # noqa: F811
    client.force_login(admin)
    return client
