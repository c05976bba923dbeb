"""Settings in the management API (admins only): read them all, change some."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema

from mlxmanager.sitesettings import selectors, services

router = Router(tags=["settings"])

Raw = str | int | float | None


class SettingOut(Schema):
    key: str
    label: str
    env: str
    applies: str
    help: str
    value: Any = None
    default: Any = None
    source: str
    secret: bool


class SettingsOut(Schema):
    settings: list[SettingOut]


class SettingsPatch(Schema):
    """Only the settings given change; null (or "") puts one back to its default."""

    memory_limit: Raw = None
    prompt_cache: Raw = None
    disk_cache_bytes: Raw = None
    max_queue: Raw = None
    max_user_concurrent: Raw = None
    queue_timeout: Raw = None
    local_timeout: Raw = None
    default_model: str | None = None
    model_aliases: dict[str, str] | None = None
    audit_retention_days: Raw = None
    hf_endpoint: str | None = None
    hf_token: str | None = None
    cors_origins: list[str] | str | None = None


class SettingsSaved(SettingsOut):
    changed: list[str]
    applied: dict[str, str]
    worker: str | None = None


@router.get("", response=SettingsOut, summary="Every setting: its value, default and where it applies")
def settings_list(request: HttpRequest) -> dict[str, Any]:
    return {"settings": selectors.rows()}


@router.patch(
    "", response=SettingsSaved, summary="Change settings (audited; applied without a restart where possible)"
)
def settings_patch(request: HttpRequest, body: SettingsPatch) -> dict[str, Any]:
    values = body.model_dump(exclude_unset=True)
    result = services.settings_update(values=values, user=getattr(request, "auth", None) or request.user)
    return {"settings": selectors.rows(), **result}
