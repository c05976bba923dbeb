"""Writes for profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db import transaction

from mlxmanager.errors import Conflict, DomainError
from mlxmanager.profiles.models import Profile

DEMO_PROFILES: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": {
        "description": "SmolLM2 135M Instruct (Q4), the demo chat model",
        "defaults": {"temperature": 0.2, "max_tokens": 256},
        "is_default": True,
        "is_test_model": False,
    },
    "tiny-random": {
        "description": "Tiny random-weight test model: fast, output is gibberish",
        "defaults": {"max_tokens": 64},
        "is_default": False,
        "is_test_model": True,
    },
}


def profile_create(
    *,
    name: str,
    model_path: str,
    description: str = "",
    defaults: dict[str, Any] | None = None,
    is_default: bool = False,
    is_test_model: bool = False,
) -> Profile:
    if Profile.objects.filter(name=name).exists():
        raise Conflict(f"a profile named '{name}' already exists", param="name")
    if not Path(model_path).is_dir():
        raise DomainError(f"model directory '{model_path}' does not exist", param="model_path")
    with transaction.atomic():
        if is_default:
            Profile.objects.filter(is_default=True).update(is_default=False)
        return Profile.objects.create(
            name=name,
            model_path=model_path,
            description=description,
            defaults=defaults or {},
            is_default=is_default,
            is_test_model=is_test_model,
        )


def profile_ensure_demo(*, models: dict[str, Path]) -> list[Profile]:
    """Create (or repoint) the demo profiles for the models `prepare_demo_models` built."""
    made = []
    for name, path in models.items():
        spec = DEMO_PROFILES[name]
        existing = Profile.objects.filter(name=name).first()
        if existing is None:
            made.append(
                profile_create(
                    name=name,
                    model_path=str(path),
                    description=spec["description"],
                    defaults=spec["defaults"],
                    # Never steal "default" from a profile the admin chose.
                    is_default=spec["is_default"] and not Profile.objects.filter(is_default=True).exists(),
                    is_test_model=spec["is_test_model"],
                )
            )
        elif existing.model_path != str(path):
            existing.model_path = str(path)
            existing.save(update_fields=["model_path"])
    return made
