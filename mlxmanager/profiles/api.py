"""Profiles in the management API: everyone may read them, admins change them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema, Status

from mlxmanager.permissions import admin_auth, is_admin, require_admin
from mlxmanager.profiles import selectors, services
from mlxmanager.profiles.schemas import GenerationDefaults

router = Router(tags=["profiles"])


class ProfileOut(Schema):
    """A profile. Members get only the fields up to `enabled` (what choosing a model needs);
    the rest (where the model is on disk, the system prompt, serving settings) are left out of
    their answers: admins only."""

    id: int
    name: str
    kind: str
    description: str
    context_length: int | None
    max_output_tokens: int | None
    is_default: bool
    enabled: bool
    # Admins only.
    model_path: str | None = None
    defaults: dict[str, Any] | None = None
    system_prompt: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    draft_model_path: str | None = None
    num_draft_tokens: int | None = None
    kv_bits: int | None = None
    prompt_cache_bytes: int | None = None
    pinned: bool | None = None
    preload: bool | None = None
    keep_alive_seconds: int | None = None
    max_concurrent: int | None = None
    is_test_model: bool | None = None
    created_at: datetime | None = None


MEMBER_FIELDS = (
    "id", "name", "kind", "description", "context_length", "max_output_tokens", "is_default", "enabled"
)  # fmt: skip


def _shown(request: HttpRequest, profile: Any) -> Any:
    """The whole profile for an admin; for a member, a dict of MEMBER_FIELDS only (the response
    is rendered with exclude_unset, so the admin-only fields are absent, not null)."""
    if is_admin(request.user):
        return profile
    return {f: getattr(profile, f) for f in MEMBER_FIELDS}


class ProfilePatch(Schema):
    """Fields to change; the ones left out keep their value."""

    name: str | None = None
    model_path: str | None = None
    kind: str | None = None
    description: str | None = None
    defaults: GenerationDefaults | None = None
    system_prompt: str | None = None
    context_length: int | None = None
    max_output_tokens: int | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    draft_model_path: str | None = None
    num_draft_tokens: int | None = None
    kv_bits: int | None = None
    # Bytes, or a size such as "2GB" or "512MiB"; null: the worker's MLXM_PROMPT_CACHE_BYTES.
    prompt_cache_bytes: int | str | None = None
    pinned: bool | None = None
    preload: bool | None = None
    keep_alive_seconds: int | None = None
    max_concurrent: int | None = None
    is_default: bool | None = None
    is_test_model: bool | None = None
    enabled: bool | None = None


class ProfileIn(ProfilePatch):
    name: str  # type: ignore[assignment]
    model_path: str  # type: ignore[assignment]


# Fields where JSON null means "clear it" rather than "missing".
_NULLABLE = {"context_length", "max_output_tokens", "kv_bits", "keep_alive_seconds", "prompt_cache_bytes"}


def _values(body: ProfilePatch) -> dict[str, Any]:
    values = {}
    for key in body.model_fields_set:
        value = getattr(body, key)
        if value is None and key not in _NULLABLE:
            continue
        values[key] = value
    return values


# Members may list and read profiles (the playground picks from them); changes are for admins.
_ADMIN = admin_auth("change profiles")


@router.get("", response=list[ProfileOut], exclude_unset=True)
def list_profiles(request: HttpRequest) -> list[Any]:
    return [_shown(request, p) for p in selectors.profile_list()]


@router.get("/{name}", response=ProfileOut, exclude_unset=True)
def get_profile(request: HttpRequest, name: str) -> Any:
    return _shown(request, selectors.profile_get(name=name))


@router.post("", response={201: ProfileOut}, auth=_ADMIN)
def create_profile(request: HttpRequest, body: ProfileIn) -> Status[Any]:
    require_admin(request)
    values = _values(body)
    name, model_path = values.pop("name"), values.pop("model_path")
    return Status(201, services.profile_create(name=name, model_path=model_path, **values))


@router.patch("/{name}", response=ProfileOut, auth=_ADMIN)
def update_profile(request: HttpRequest, name: str, body: ProfilePatch) -> Any:
    require_admin(request)
    profile = selectors.profile_get(name=name)
    return services.profile_update(profile=profile, **_values(body))


@router.delete("/{name}", response={204: None}, auth=_ADMIN)
def delete_profile(request: HttpRequest, name: str) -> Status[None]:
    require_admin(request)
    services.profile_delete(profile=selectors.profile_get(name=name))
    return Status(204, None)
