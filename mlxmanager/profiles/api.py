"""Profiles in the management API: everyone may read them, admins change them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema, Status

from mlxmanager.permissions import AdminSessionAuth, require_admin
from mlxmanager.profiles import selectors, services
from mlxmanager.profiles.schemas import GenerationDefaults

router = Router(tags=["profiles"])


class ProfileOut(Schema):
    id: int
    name: str
    model_path: str
    kind: str
    description: str
    defaults: dict[str, Any]
    system_prompt: str
    context_length: int | None
    max_output_tokens: int | None
    chat_template_kwargs: dict[str, Any]
    tool_parser: str
    reasoning_parser: str
    draft_model_path: str
    num_draft_tokens: int
    kv_bits: int | None
    pinned: bool
    preload: bool
    keep_alive_seconds: int | None
    max_concurrent: int
    is_default: bool
    is_test_model: bool
    enabled: bool
    created_at: datetime


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
_NULLABLE = {"context_length", "max_output_tokens", "kv_bits", "keep_alive_seconds"}


def _values(body: ProfilePatch) -> dict[str, Any]:
    values = {}
    for key in body.model_fields_set:
        value = getattr(body, key)
        if value is None and key not in _NULLABLE:
            continue
        values[key] = value
    return values


# Members may list and read profiles (the playground picks from them); changes are for admins.
_ADMIN = AdminSessionAuth("change profiles")


@router.get("", response=list[ProfileOut])
def list_profiles(request: HttpRequest) -> list[Any]:
    return list(selectors.profile_list())


@router.get("/{name}", response=ProfileOut)
def get_profile(request: HttpRequest, name: str) -> Any:
    return selectors.profile_get(name=name)


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
