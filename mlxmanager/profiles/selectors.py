"""Reads for profiles."""

from __future__ import annotations

from mlxmanager.errors import NotFound
from mlxmanager.profiles.models import Profile


async def profile_resolve(name: str) -> Profile:
    """The enabled profile clients address as `name`."""
    try:
        return await Profile.objects.aget(name=name, enabled=True)
    except Profile.DoesNotExist as exc:
        raise NotFound(f"The model '{name}' does not exist", param="model") from exc


async def profile_list_served() -> list[Profile]:
    return [p async for p in Profile.objects.filter(enabled=True).order_by("name")]
