"""Pool actions and state against a real worker: busy models stay, idle ones go."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inference import protocol as p
from inference.gateway import Target
from mlxmanager.errors import Conflict, NotFound
from mlxmanager.pool.selectors import pool_state
from mlxmanager.pool.services import WorkerUnavailable, engine_session, pool_action
from mlxmanager.profiles.models import Profile

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def tiny(demo_models: dict[str, Path]) -> Profile:
    return Profile.objects.create(name="tiny-chat", model_path=str(demo_models["tiny-random"]))


def generate(profile: Profile, request_id: str, max_tokens: int) -> p.Generate:
    return p.Generate(
        request_id=request_id,
        model=Target(profile).spec,
        sampling=p.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        messages=[{"role": "user", "content": "hello there"}],
    )


@pytest.mark.slow
async def test_a_busy_model_is_not_unloaded_an_idle_one_is(worker: str, tiny: Profile) -> None:
    async with engine_session() as client:
        stream = client.generate(generate(tiny, "busy", 100_000))
        await anext(stream)  # generating now
        with pytest.raises(Conflict, match="serving 1 request"):
            await pool_action(profile_name="tiny-chat", action="unload")
        state = await pool_state()
        assert state.loaded[0].active == 1
        await stream.aclose()  # aborts it in the worker

    for _ in range(100):
        if not (await pool_state()).loaded[0].active:
            break
        await asyncio.sleep(0.05)
    assert await pool_action(profile_name="tiny-chat", action="unload") == "Unloaded tiny-chat."
    assert (await pool_state()).loaded == []


@pytest.mark.slow
async def test_state_reports_usage_and_cache_hits(worker: str, tiny: Profile) -> None:
    async with engine_session() as client:
        for rid in ("one", "two"):  # the same prompt twice: the second hits the prompt cache
            async for _ in client.generate(generate(tiny, rid, 4)):
                pass
    state = await pool_state()
    assert state.up and state.used_bytes > 0 and state.limit_bytes > state.used_bytes
    (model,) = state.loaded
    assert model.name == "tiny-chat" and model.profiles == ["tiny-chat"]
    # The limit's parts: the worker process's own, the weights, no request running, the two
    # answers' prompt cache.
    assert state.weights_bytes == model.weight_bytes and state.kv_bytes == model.kv_bytes == 0
    assert state.prompt_cache_bytes == model.cache_bytes > 0
    assert state.used_bytes == state.process_bytes + state.weights_bytes + state.prompt_cache_bytes
    assert state.process_bytes > 0
    assert state.free_bytes == state.limit_bytes - state.used_bytes
    assert model.weights_form == "float32"
    assert model.hit_rate is not None and 0 < model.hit_rate < 1
    assert model.last_used is not None
    assert state.available == []
    assert len(state.charts) == 2


@pytest.mark.slow
async def test_profiles_sharing_weights_are_one_loaded_model(worker: str, tiny: Profile) -> None:
    await Profile.objects.acreate(name="tiny-cold", model_path=tiny.model_path, defaults={"temperature": 0})
    await pool_action(profile_name="tiny-chat", action="load")
    state = await pool_state()
    assert [m.profiles for m in state.loaded] == [["tiny-chat", "tiny-cold"]]
    assert state.available == []


async def test_errors_without_a_worker(no_worker: str) -> None:
    await Profile.objects.acreate(name="p", model_path="/m")
    with pytest.raises(WorkerUnavailable) as exc:
        await pool_action(profile_name="p", action="pin")
    assert exc.value.status == 503
    with pytest.raises(NotFound):
        await pool_action(profile_name="missing", action="load")
    state = await pool_state()
    assert not state.up and [pr.name for pr in state.available] == ["p"]
