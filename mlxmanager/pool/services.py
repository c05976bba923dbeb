"""Writes to the worker's model pool: load, unload, pin, unpin.

The pool lives in the inference worker; these functions send it commands over the
engine protocol and turn its refusals into domain errors with readable messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import transaction

from inference import protocol as p
from inference.client import EngineClient, EngineDeadError, EngineRequestError
from inference.gateway import Target
from mlxmanager.errors import Conflict, DomainError, NotFound
from mlxmanager.profiles.models import Profile
from mlxmanager.profiles.services import pinned_sharers

log = logging.getLogger(__name__)

ACTIONS = ("load", "unload", "pin", "unpin")
# Loading a large model from a slow disk can take minutes; a hung worker should not hang a page forever.
COMMAND_TIMEOUT_S = 600.0


class WorkerUnavailable(DomainError):
    status = 503
    code = "worker_unavailable"


class NotEnoughMemory(DomainError):
    status = 503
    code = "overloaded"


class ModelLoadFailed(DomainError):
    status = 502
    code = "model_load_failed"


@asynccontextmanager
async def engine_session() -> AsyncIterator[EngineClient]:
    """A connection to the worker for one page, command or event stream, closed afterwards.

    Its own connection, not the per-loop shared one: views run on short-lived loops in
    tests and management commands, and a stream must not outlive its client.
    """
    client = EngineClient(settings.MLXM_WORKER_SOCKET, connect_timeout=settings.MLXM_WORKER_CONNECT_TIMEOUT)
    try:
        yield client
    finally:
        await client.aclose()


def _readable(action: str, name: str, exc: EngineRequestError) -> DomainError:
    if exc.code == p.ERR_OVERLOADED:
        message = exc.message
        if not message.lower().startswith("not enough memory"):
            message = f"not enough memory: {message}"
        return NotEnoughMemory(message[:1].upper() + message[1:], param="profile")
    if exc.code == p.ERR_MODEL_LOAD:
        return ModelLoadFailed(exc.message, param="profile")
    if exc.code == p.ERR_BAD_REQUEST:
        return Conflict(f"Could not {action} '{name}': {exc.message}", param="action")
    return DomainError(f"Could not {action} '{name}': {exc.message}", param="action")


async def pool_action(*, profile_name: str, action: str) -> str:
    """Run `action` on the model of the profile `profile_name`; returns a sentence for the admin."""
    if action not in ACTIONS:
        raise DomainError(f"unknown pool action '{action}'; use one of {', '.join(ACTIONS)}", param="action")
    try:
        profile = await Profile.objects.aget(name=profile_name)
    except Profile.DoesNotExist as exc:
        raise NotFound(f"no profile named '{profile_name}'", param="profile") from exc
    if action == "load" and not profile.enabled:
        raise Conflict(f"'{profile_name}' is disabled; enable it before loading it", param="profile")
    spec = Target(profile).spec
    # Pins are per profile (kept on the profile, so they outlive a restart); the weights stay
    # pinned while any profile they serve is pinned.
    if action == "unpin" and (sharers := await sync_to_async(pinned_sharers)(profile)):
        await Profile.objects.filter(pk=profile.pk).aupdate(pinned=False)
        return f"Unpinned {profile_name}; its weights stay pinned for {', '.join(sharers)}."
    try:
        async with engine_session() as client:
            await asyncio.wait_for(client.pool_command(action, spec), COMMAND_TIMEOUT_S)
    except EngineDeadError as exc:
        raise WorkerUnavailable(
            "The inference worker is not running, so the pool can't be changed. "
            "Start it with `manage.py serve` (or `manage.py inference_worker`).",
        ) from exc
    except TimeoutError as exc:
        raise WorkerUnavailable(f"The worker did not finish the {action} in time.") from exc
    except EngineRequestError as exc:
        raise _readable(action, profile_name, exc) from exc
    if action in ("pin", "unpin"):
        await Profile.objects.filter(pk=profile.pk).aupdate(pinned=action == "pin")
    done = {"load": "Loaded", "unload": "Unloaded", "pin": "Pinned", "unpin": "Unpinned"}[action]
    return f"{done} {profile_name}."


async def _send_quietly(action: str, spec: p.ModelSpec) -> None:
    try:
        async with engine_session() as client:
            await asyncio.wait_for(client.pool_command(action, spec), 30)
    except EngineRequestError as exc:
        log.debug("pool %s of %s after a profile change: %s", action, spec.name, exc.message)
    except (EngineDeadError, TimeoutError):
        pass  # no worker: nothing is loaded, so there is nothing to change


def pool_command_on_commit(*, action: str, spec: p.ModelSpec) -> None:
    """Tell the worker about a profile change once the change is committed (best effort)."""
    transaction.on_commit(partial(async_to_sync(_send_quietly), action, spec), robust=True)
