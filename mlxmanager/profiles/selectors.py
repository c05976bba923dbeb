"""Reads for profiles."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from mlxmanager.errors import NotFound
from mlxmanager.profiles.models import Profile

# A download still in progress keeps its partial files in this folder (mlxmanager.downloads).
_PARTIAL_DIR = ".mlxm-download"


async def profile_resolve(name: str) -> Profile:
    """The enabled profile clients address as `name`."""
    try:
        return await Profile.objects.aget(name=name, enabled=True)
    except Profile.DoesNotExist as exc:
        raise NotFound(f"The model '{name}' does not exist", param="model") from exc


async def profile_list_served() -> list[Profile]:
    return [p async for p in Profile.objects.filter(enabled=True).order_by("name")]


def profile_list() -> QuerySet[Profile]:
    """Every profile, enabled or not, default first."""
    return Profile.objects.order_by("-is_default", "name")


def profile_get(*, name: str | None = None, pk: int | None = None) -> Profile:
    try:
        if pk is not None:
            return Profile.objects.get(pk=pk)
        return Profile.objects.get(name=name)
    except Profile.DoesNotExist as exc:
        raise NotFound(f"no profile named '{name}'" if name else "no such profile", param="name") from exc


@dataclass
class LocalModel:
    path: str
    label: str
    used_by: list[str] = field(default_factory=list)


def _downloaded_models() -> list[tuple[str, str]]:
    """(path, label) of the models the downloads app knows: its folder, the HF cache, extra dirs."""
    try:
        from mlxmanager.downloads.selectors import local_model_list
    except ImportError:
        return []
    return [(str(m.path), m.name) for m in local_model_list()]


def local_model_dirs(*, profiles: list[Profile] | None = None) -> list[LocalModel]:
    """Model directories a profile can use: what is on disk (downloads, MLXM_MODELS_DIR) plus the
    ones existing profiles already point at (e.g. the demo models)."""
    profiles = list(profile_list()) if profiles is None else profiles
    found: dict[str, LocalModel] = {}

    def add(path: str, label: str) -> LocalModel | None:
        key = os.path.realpath(path)
        if key not in found and (Path(path) / "config.json").is_file():
            found[key] = LocalModel(path=path, label=label)
        return found.get(key)

    for path, label in _downloaded_models():
        add(path, label)
    root = Path(settings.MLXM_MODELS_DIR)
    try:
        children = sorted(root.iterdir())
    except OSError:
        children = []
    for child in children:
        if child.is_dir() and not (child / _PARTIAL_DIR).exists():
            add(str(child), child.name.replace("--", "/"))
    for pr in profiles:
        if pr.draft_model_path:
            add(pr.draft_model_path, Path(pr.draft_model_path).name)
        model = add(pr.model_path, Path(pr.model_path).name)
        if model is not None:
            model.used_by.append(pr.name)
    return sorted(found.values(), key=lambda m: m.label.lower())


# What a new profile of a model folder starts from: the "Create profile" buttons of Local
# models and Downloads, and Discover's "register a local folder", open the form with these.
_KIND_FOR_TYPE = {
    "text": Profile.KIND_LLM,
    "vision": Profile.KIND_VISION,
    "embeddings": Profile.KIND_EMBEDDINGS,
    "stt": Profile.KIND_STT,
    "tts": Profile.KIND_TTS,
}


def profile_suggestion(*, path: str) -> dict[str, Any]:
    """Initial values of the profile form for the model folder at `path`: the folder (as the
    model choice when it is a known local model, else as the typed path), a name derived from
    it that no profile has yet, the type detected from its config.json, and its context length.
    A folder that is missing or has no config.json gives the path alone (the form says why
    when it is submitted)."""
    import json
    import re

    from mlxmanager.downloads import analysis

    path = (path or "").strip()
    initial: dict[str, Any] = {}
    if not path:
        return initial
    known = {m.path for m in local_model_dirs()}
    if path in known:
        initial["model_choice"] = path
    else:
        initial["model_path_other"] = path
    folder = Path(path).expanduser()
    # <org>--<name> (our downloads), a snapshot in the HF cache (…/models--org--name/snapshots/sha)
    base = folder.name
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        base = folder.parent.parent.name[len("models--") :]
    base = base.split("--")[-1]
    slug = re.sub(r"[^a-z0-9_-]+", "-", base.lower()).strip("-_")[:90] or "model"
    name, n = slug, 2
    taken = set(Profile.objects.values_list("name", flat=True))
    while name in taken:
        name, n = f"{slug}-{n}", n + 1
    initial["name"] = name
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return initial
    if not isinstance(config, dict):
        return initial
    files = [p.name for p in folder.glob("*.json")] + [
        p.relative_to(folder).as_posix() for p in folder.glob("*/*.json")
    ]
    kind = _KIND_FOR_TYPE.get(analysis.detect_type(config, files=files))
    if kind:
        initial["kind"] = kind
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    context = config.get("max_position_embeddings") or (text_config or {}).get("max_position_embeddings")
    if isinstance(context, int) and context >= 16:
        initial["context_length"] = context
    return initial
