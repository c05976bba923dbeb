"""Writes for profiles. Every value is validated here, whichever page or API sent it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Unpack

from django.db import transaction
from pydantic import ValidationError

from inference.gateway import Target
from mlxmanager.errors import Conflict, DomainError
from mlxmanager.profiles.models import Profile
from mlxmanager.profiles.schemas import GenerationDefaults, ProfileChanges, ProfileOptions

DEMO_PROFILES: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": {
        "description": "SmolLM2 135M Instruct (Q4), the demo chat model",
        "defaults": {"temperature": 0.2, "max_tokens": 256},
        "is_default": True,
        "is_test_model": False,
        # Its template knows no tools: describe them in the system prompt instead.
        "tool_parser": "prompt",
    },
    "tiny-random": {
        "description": "Tiny random-weight test model: fast, output is gibberish",
        "defaults": {"max_tokens": 64},
        "is_default": False,
        "is_test_model": True,
    },
    "tiny-tools": {
        "description": "Tiny random-weight test model with a Qwen3-style template: tools, reasoning",
        "defaults": {"max_tokens": 64},
        "is_default": False,
        "is_test_model": True,
    },
    "all-minilm-l6-v2": {
        "description": "all-MiniLM-L6-v2 sentence embeddings (384 dimensions), for /v1/embeddings",
        "defaults": {},
        "is_default": False,
        "is_test_model": False,
        "kind": "embeddings",
    },
    "tiny-llava": {
        "description": "Tiny random-weight LLaVA (2-layer CLIP tower): images + text, output is gibberish",
        "defaults": {"max_tokens": 32},
        "is_default": False,
        "is_test_model": True,
        "kind": "vision",
    },
    "tiny-whisper": {
        "description": "Tiny random-weight Whisper (real tokenizer) for /v1/audio/transcriptions",
        "defaults": {"max_tokens": 24},
        "is_default": False,
        "is_test_model": True,
        "kind": "stt",
    },
    "tiny-tts": {
        "description": "Tiny random-weight Soprano for /v1/audio/speech: its speech is noise",
        "defaults": {"max_tokens": 8},
        "is_default": False,
        "is_test_model": True,
        "kind": "tts",
    },
}

_SLUG = re.compile(r"^[-a-zA-Z0-9_]+$")
_PARSER = re.compile(r"^[a-z0-9_]{1,50}$")
MAX_SYSTEM_PROMPT = 100_000
MAX_TEMPLATE_KWARGS_BYTES = 4096
# Fields whose change gives the worker a different engine (see ModelSpec.key).
_ENGINE_FIELDS = ("model_path", "draft_model_path", "num_draft_tokens", "kv_bits")


def _int_between(value: Any, param: str, low: int, high: int, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DomainError(f"{param} must be a whole number", param=param)
    if not low <= value <= high:
        raise DomainError(f"{param} must be between {low} and {high}", param=param)
    return value


MAX_PROMPT_CACHE_BYTES = 1 << 50


def _size(value: Any, param: str) -> int | None:
    """Bytes from a whole number or a size such as "2GB" / "512MiB" (None: unset)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        from inference.env import parse_size

        try:
            value = parse_size(value, name=param)
        except ValueError as exc:
            raise DomainError(str(exc), param=param) from None
    return _int_between(value, param, 0, MAX_PROMPT_CACHE_BYTES)


def _model_dir(path: str, param: str) -> str:
    path = (path or "").strip()
    if not path:
        raise DomainError("choose a model directory", param=param)
    expanded = Path(path).expanduser()
    if not expanded.is_absolute():
        raise DomainError(f"'{path}' is not an absolute path", param=param)
    if not expanded.is_dir():
        raise DomainError(f"model directory '{path}' does not exist", param=param)
    if not (expanded / "config.json").is_file():
        raise DomainError(f"'{path}' has no config.json, so it is not a model directory", param=param)
    return str(expanded)


def _defaults(value: GenerationDefaults | dict[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, GenerationDefaults):
        return value.stored()
    if not isinstance(value, dict):
        raise DomainError("defaults must be an object", param="defaults")
    try:
        return GenerationDefaults.model_validate(value).stored()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"] if not isinstance(x, int)) or "defaults"
        msg = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = f"'{where}' is not a generation default"
        raise DomainError(f"{where}: {msg}", param=f"defaults.{where}") from exc


def _template_kwargs(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DomainError("chat-template options must be a JSON object", param="chat_template_kwargs")
    try:
        encoded = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise DomainError("chat-template options must be plain JSON", param="chat_template_kwargs") from exc
    if len(encoded) > MAX_TEMPLATE_KWARGS_BYTES:
        raise DomainError("chat-template options are too long", param="chat_template_kwargs")
    return value


def _parser(value: Any, param: str) -> str:
    value = (value or "").strip()
    if value and not _PARSER.match(value):
        raise DomainError(f"{param} must be a parser name like 'qwen3' or 'json_tools'", param=param)
    return str(value)


_KIND_OF_TYPE = {
    "text": Profile.KIND_LLM,
    "embeddings": Profile.KIND_EMBEDDINGS,
    "vision": Profile.KIND_VISION,
    "stt": Profile.KIND_STT,
    "tts": Profile.KIND_TTS,
}
KIND_LABELS = {
    Profile.KIND_LLM: "a text generation model",
    Profile.KIND_VISION: "a vision model",
    Profile.KIND_EMBEDDINGS: "an embeddings model",
    Profile.KIND_STT: "a speech-to-text model",
    Profile.KIND_TTS: "a text-to-speech model",
}


def _detected_kind(path: str) -> str | None:
    """The profile kind a model folder's config.json (and files) says, not its name; None if unknown."""
    from mlxmanager.downloads import analysis

    folder = Path(path)
    try:
        config = json.loads((folder / "config.json").read_text())
        files = [str(f.relative_to(folder)) for f in folder.rglob("*.json")]
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    model_type = analysis.detect_type(config, files=files)
    return _KIND_OF_TYPE.get(model_type)


def _check_kind(detected: str | None, kind: str, *, explicit: bool) -> None:
    """Refuse a kind that contradicts the one the model's config says (`detected`)."""
    if detected is None or detected == kind:
        return
    labels = KIND_LABELS
    raise DomainError(
        f"this model is {labels[detected]} (read from its config.json), not {labels.get(kind, kind)}: "
        f"set the kind to '{detected}'",
        param="kind" if explicit else "model_path",
    )


def _clean(values: dict[str, Any], *, instance: Profile | None = None) -> dict[str, Any]:
    """Validate and normalise the fields present in `values`; raise DomainError(param=field)."""
    out: dict[str, Any] = {}
    known = ProfileChanges.__optional_keys__ | ProfileChanges.__required_keys__
    for key in values:
        if key not in known:
            raise DomainError(f"unknown profile field '{key}'", param=key)
    if "name" in values:
        name = str(values["name"] or "").strip()
        if not name:
            raise DomainError("a profile needs a name", param="name")
        if len(name) > 100 or not _SLUG.match(name):
            raise DomainError(
                "the name may only hold letters, digits, '-' and '_' (at most 100)", param="name"
            )
        clash = Profile.objects.filter(name=name)
        if instance is not None:
            clash = clash.exclude(pk=instance.pk)
        if clash.exists():
            raise Conflict(f"a profile named '{name}' already exists", param="name")
        out["name"] = name
    if "model_path" in values:
        out["model_path"] = _model_dir(values["model_path"], "model_path")
    if "kind" in values:
        if values["kind"] not in dict(Profile.KIND_CHOICES):
            kinds = ", ".join(dict(Profile.KIND_CHOICES))
            raise DomainError(f"kind must be one of: {kinds}", param="kind")
        out["kind"] = values["kind"]
    if "description" in values:
        description = str(values["description"] or "").strip()
        if len(description) > 300:
            raise DomainError("the description is longer than 300 characters", param="description")
        out["description"] = description
    if "defaults" in values:
        out["defaults"] = _defaults(values["defaults"])
    if "system_prompt" in values:
        prompt = str(values["system_prompt"] or "")
        if len(prompt) > MAX_SYSTEM_PROMPT:
            raise DomainError("the system prompt is too long", param="system_prompt")
        out["system_prompt"] = prompt.strip()
    if "context_length" in values:
        out["context_length"] = _int_between(
            values["context_length"], "context_length", 16, 10_000_000, optional=True
        )
    if "max_output_tokens" in values:
        out["max_output_tokens"] = _int_between(
            values["max_output_tokens"], "max_output_tokens", 1, 10_000_000, optional=True
        )
    if "chat_template_kwargs" in values:
        out["chat_template_kwargs"] = _template_kwargs(values["chat_template_kwargs"])
    for key in ("tool_parser", "reasoning_parser"):
        if key in values:
            out[key] = _parser(values[key], key)
    if "draft_model_path" in values:
        draft = str(values["draft_model_path"] or "").strip()
        out["draft_model_path"] = _model_dir(draft, "draft_model_path") if draft else ""
    if "num_draft_tokens" in values:
        out["num_draft_tokens"] = _int_between(values["num_draft_tokens"], "num_draft_tokens", 1, 16)
    if "kv_bits" in values:
        if values["kv_bits"] not in (None, 4, 8):
            raise DomainError("kv_bits must be 4, 8 or empty (no KV quantization)", param="kv_bits")
        out["kv_bits"] = values["kv_bits"]
    if "prompt_cache_bytes" in values:
        out["prompt_cache_bytes"] = _size(values["prompt_cache_bytes"], "prompt_cache_bytes")
    if "keep_alive_seconds" in values:
        out["keep_alive_seconds"] = _int_between(
            values["keep_alive_seconds"], "keep_alive_seconds", 1, 30 * 86400, optional=True
        )
    if "max_concurrent" in values:
        out["max_concurrent"] = _int_between(values["max_concurrent"], "max_concurrent", 1, 256)
    for key in ("pinned", "preload", "is_default", "is_test_model", "enabled"):
        if key in values:
            if not isinstance(values[key], bool):
                raise DomainError(f"{key} must be true or false", param=key)
            out[key] = values[key]
    model_path = out.get("model_path", instance.model_path if instance else None)
    if out.get("draft_model_path") and out["draft_model_path"] == model_path:
        raise DomainError("the draft model must differ from the model", param="draft_model_path")
    if ("model_path" in values or "kind" in values) and model_path:
        detected = _detected_kind(model_path)
        if "kind" not in values and detected in dict(Profile.KIND_CHOICES):
            out["kind"] = detected  # the profile takes its kind from the model unless told
        kind = out.get("kind") or (instance.kind if instance else Profile.KIND_LLM)
        _check_kind(detected, kind, explicit="kind" in values)
    return out


def _is_test_model(model_path: str) -> bool:
    """Models the project builds for tests say so in their config (see demo_models)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool((config.get("mlxmanager") or {}).get("test_model"))


def _engine_shape(profile: Profile) -> tuple[Any, ...]:
    return tuple(getattr(profile, f) for f in _ENGINE_FIELDS)


def _unload_if_unused(profile: Profile) -> None:
    """After commit, unload `profile`'s weights unless another enabled profile serves them."""
    from mlxmanager.pool.services import pool_command_on_commit

    spec = Target(profile).spec
    others = Profile.objects.filter(enabled=True).exclude(pk=profile.pk)
    if not any(Target(o).spec.key == spec.key for o in others):
        pool_command_on_commit(action="unload", spec=spec)


def pinned_sharers(profile: Profile) -> list[str]:
    """The other enabled, pinned profiles served by the same weights as `profile`: while there
    is one, unpinning `profile` leaves the weights pinned (pins are per profile)."""
    key = Target(profile).spec.key
    others = Profile.objects.filter(enabled=True, pinned=True).exclude(pk=profile.pk).order_by("name")
    return [o.name for o in others if Target(o).spec.key == key]


@transaction.atomic
def profile_create(*, name: str, model_path: str, **options: Unpack[ProfileOptions]) -> Profile:
    """Create a served profile. `is_test_model` defaults to what the model's config says."""
    values = _clean({"name": name, "model_path": model_path, **options})
    if "is_test_model" not in options:
        values["is_test_model"] = _is_test_model(values["model_path"])
    if values.get("is_default"):
        Profile.objects.filter(is_default=True).update(is_default=False)
    return Profile.objects.create(**values)


@transaction.atomic
def profile_update(*, profile: Profile, **changes: Unpack[ProfileChanges]) -> Profile:
    """Change the given fields; the worker hears about pin and engine changes after commit."""
    values = _clean(dict(changes), instance=profile)
    before = Profile(**{f.attname: getattr(profile, f.attname) for f in Profile._meta.concrete_fields})
    for key, value in values.items():
        setattr(profile, key, value)
    if values.get("is_default"):
        Profile.objects.filter(is_default=True).exclude(pk=profile.pk).update(is_default=False)
    profile.save()
    if before.enabled and (not profile.enabled or _engine_shape(before) != _engine_shape(profile)):
        _unload_if_unused(before)
    elif (
        profile.enabled
        and before.pinned != profile.pinned
        and (profile.pinned or not pinned_sharers(profile))
    ):
        from mlxmanager.pool.services import pool_command_on_commit

        pool_command_on_commit(action="pin" if profile.pinned else "unpin", spec=Target(profile).spec)
    return profile


@transaction.atomic
def profile_delete(*, profile: Profile) -> None:
    """Delete the profile; its weights leave the pool after commit unless another profile uses them."""
    _unload_if_unused(profile)
    profile.delete()


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
                    tool_parser=spec.get("tool_parser", ""),
                    kind=spec.get("kind", Profile.KIND_LLM),
                )
            )
        elif existing.model_path != str(path):
            existing.model_path = str(path)
            existing.save(update_fields=["model_path"])
    return made
