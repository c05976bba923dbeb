"""The pool page and its actions (async views, through the async stack); the worker's
absence is shown, never a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.test import AsyncClient, Client

from inference import protocol as p
from inference.gateway import Target
from mlxmanager.asgi import application
from mlxmanager.pool import views
from mlxmanager.pool.selectors import pool_state
from mlxmanager.pool.services import engine_session
from mlxmanager.profiles.models import Profile

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HX-Request": "true"}


@pytest.fixture
def profile() -> Profile:
    return Profile.objects.create(name="tiny", model_path="/models/tiny", is_test_model=True)


@pytest.mark.asyncio
async def test_pool_is_for_admins(member_aclient: AsyncClient, no_worker: str) -> None:
    assert (await member_aclient.get("/pool/")).status_code == 403
    assert (await member_aclient.get("/pool/events/")).status_code == 403
    assert (await member_aclient.post("/pool/tiny/load/")).status_code == 403
    assert "Only admins" in (await member_aclient.get("/pool/")).content.decode()
    resp = await AsyncClient().get("/pool/")
    assert resp.status_code == 302 and resp["Location"].startswith("/login/")


def test_members_get_no_nav_link(member_client: Client) -> None:
    assert "/pool/" not in member_client.get("/profiles/").content.decode()


@pytest.mark.asyncio
async def test_page_without_a_worker_shows_a_banner(
    admin_aclient: AsyncClient, no_worker: str, profile: Profile
) -> None:
    resp = await admin_aclient.get("/pool/")
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "The inference worker is not running." in html
    assert 'role="alert"' in html
    assert "tiny" in html  # still lists the profiles
    assert "/pool/tiny/load/" not in html  # but offers no Load button
    assert 'aria-current="page">Pool' in html


@pytest.mark.asyncio
async def test_action_without_a_worker_is_a_clear_503(
    admin_aclient: AsyncClient, no_worker: str, profile: Profile
) -> None:
    resp = await admin_aclient.post("/pool/tiny/load/")
    assert resp.status_code == 503
    assert "The inference worker is not running" in resp.content.decode()
    # htmx gets the live partial and the message out of band, as a normal swap.
    resp = await admin_aclient.post("/pool/tiny/load/", headers=HTMX)
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "<html" not in html
    assert 'id="pool-message" hx-swap-oob="true"' in html
    assert "The inference worker is not running" in html


@pytest.mark.asyncio
async def test_unknown_profile_and_action(
    admin_aclient: AsyncClient, no_worker: str, profile: Profile
) -> None:
    assert (await admin_aclient.post("/pool/nope/load/")).status_code == 404
    resp = await admin_aclient.post("/pool/tiny/explode/")
    assert resp.status_code == 400 and "unknown pool action" in resp.content.decode()


@pytest.mark.asyncio
async def test_loading_a_disabled_profile_is_refused(admin_aclient: AsyncClient, no_worker: str) -> None:
    await Profile.objects.acreate(name="off", model_path="/m", enabled=False)
    resp = await admin_aclient.post("/pool/off/load/")
    assert resp.status_code == 409 and "disabled" in resp.content.decode()


@pytest.mark.asyncio
async def test_htmx_refresh_returns_only_the_live_partial(admin_aclient: AsyncClient, no_worker: str) -> None:
    html = (await admin_aclient.get("/pool/", headers=HTMX)).content.decode()
    assert "<html" not in html and "<h1>" not in html
    assert "The inference worker is not running." in html


@pytest.mark.django_db
def test_pool_state_reads_one_query_however_many_profiles(no_worker: str, django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    for i in range(20):
        Profile.objects.create(name=f"p{i}", model_path=f"/m/{i}")
    with django_assert_num_queries(1):
        state = async_to_sync(pool_state)()
    assert len(state.available) == 20


# --- with a real worker ------------------------------------------------------------


@pytest.fixture
def tiny(demo_models: dict[str, Path]) -> Profile:
    return Profile.objects.create(name="tiny-chat", model_path=str(demo_models["tiny-random"]))


@pytest.mark.slow
@pytest.mark.asyncio
async def test_page_load_and_unload_with_htmx(admin_aclient: AsyncClient, worker: str, tiny: Profile) -> None:
    html = (await admin_aclient.get("/pool/")).content.decode()
    assert "The inference worker is not running" not in html
    assert 'role="meter"' in html  # the memory bar
    assert 'aria-label="Load tiny-chat"' in html
    assert 'data-events="/pool/events/"' in html and "js/pool-live.js" in html
    assert html.count('<figure class="chart">') == 2

    html = (await admin_aclient.post("/pool/tiny-chat/load/", headers=HTMX)).content.decode()
    assert "Loaded tiny-chat." in html and 'hx-swap-oob="true"' in html
    assert 'data-model="tiny-chat"' in html  # now in the loaded table
    assert '<div class="hint weights-form">float32</div>' in html  # how its weights are held
    assert "weights " in html and " · KV " in html and " · prompt cache " in html and " · free " in html
    assert 'aria-label="Unload tiny-chat"' in html and 'aria-label="Pin tiny-chat"' in html
    assert "Every enabled profile is loaded." in html

    html = (await admin_aclient.post("/pool/tiny-chat/pin/", headers=HTMX)).content.decode()
    assert 'badge">pinned' in html and 'aria-label="Unpin tiny-chat"' in html

    html = (await admin_aclient.post("/pool/tiny-chat/unload/", headers=HTMX)).content.decode()
    assert "Unloaded tiny-chat." in html and 'data-model="tiny-chat"' not in html
    assert 'aria-label="Load tiny-chat"' in html


@pytest.mark.slow
@pytest.mark.asyncio
async def test_an_overloaded_load_shows_why(admin_aclient: AsyncClient, start_worker, tiny: Profile) -> None:  # type: ignore[no-untyped-def]
    start_worker(memory_limit_bytes=64 * 1024)
    resp = await admin_aclient.post("/pool/tiny-chat/load/")
    assert resp.status_code == 503
    assert 'class="error-box" role="alert">Not enough memory' in resp.content.decode()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_events_stream_the_live_partial_until_the_client_leaves(
    admin, worker: str, tiny: Profile, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Through the real ASGI app: events arrive every EVENT_EVERY_S; a disconnect ends the response."""
    monkeypatch.setattr(views, "EVENT_EVERY_S", 0.2)
    login = Client()
    await sync_to_async(login.force_login)(admin)
    cookie = f"sessionid={login.cookies['sessionid'].value}".encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/pool/events/",
        "raw_path": b"/pool/events/",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"cookie", cookie)],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    app = ApplicationCommunicator(application, scope)
    await app.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await app.receive_output(timeout=10)
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream") in [(k.lower(), v) for k, v in start["headers"]]
    assert (await app.receive_output(timeout=10))["body"] == b"retry: 3000\n\n"
    for _ in range(2):
        event = (await app.receive_output(timeout=10))["body"].decode()
        assert event.startswith("event: pool\ndata: ") and event.endswith("\n\n")
        assert "tiny-chat" in event and "\n\n" not in event[:-2]
    await app.send_input({"type": "http.disconnect"})
    await asyncio.wait_for(app.wait(), timeout=10)  # the view stopped streaming


@pytest.mark.slow
@pytest.mark.asyncio
async def test_every_model_type_loads_into_the_one_pool(
    admin_aclient: AsyncClient, worker: str, demo_models: dict[str, Path]
) -> None:
    """Vision and speech models are loaded, listed (with their type) and unloaded like text ones."""
    for name, kind, label in (
        ("tiny-llava", Profile.KIND_VISION, "Vision (images + text)"),
        ("tiny-whisper", Profile.KIND_STT, "Speech to text"),
        ("tiny-tts", Profile.KIND_TTS, "Text to speech"),
    ):
        await sync_to_async(Profile.objects.create)(
            name=f"p-{name}", model_path=str(demo_models[name]), kind=kind
        )
        html = (await admin_aclient.post(f"/pool/p-{name}/load/", headers=HTMX)).content.decode()
        assert f"Loaded p-{name}." in html, html[:500]
        row = html[html.index(f'data-model="p-{name}"') :]
        assert label in row[: row.index("</tr>")]
    state = await pool_state()
    assert {m.kind for m in state.loaded} == {"vision", "stt", "tts"}
    # The worker process's own share (runtime, headroom), then the three models' weights.
    assert state.used_bytes == state.process_bytes + sum(m.weight_bytes for m in state.loaded)
    assert state.process_bytes > 0 and sum(m.weight_bytes for m in state.loaded) > 0
    html = (await admin_aclient.post("/pool/p-tiny-tts/unload/", headers=HTMX)).content.decode()
    assert "Unloaded p-tiny-tts." in html


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_page_shows_the_prompt_caches_disk_tier(
    admin_aclient: AsyncClient, start_worker, tiny: Profile
) -> None:  # type: ignore[no-untyped-def]
    """A long prefix written to disk by one worker is a disk hit for the next one (same data
    dir): the page shows the disk tier's size and the hits of each tier."""
    system = " ".join(f"tool{i} does thing{i % 7}" for i in range(120))

    async def ask(rid: str) -> None:
        req = p.Generate(request_id=rid, model=Target(tiny).spec,
                         sampling=p.SamplingParams(max_tokens=4, temperature=0.0),
                         messages=[{"role": "system", "content": system}, {"role": "user", "content": "hi"}])  # fmt: skip
        async with engine_session() as client:
            async for _ in client.generate(req):
                pass

    start_worker()
    await ask("first")
    for _ in range(300):
        if (await pool_state()).loaded[0].disk_entries:
            break
        await asyncio.sleep(0.05)
    start_worker()  # a fresh worker on the same data dir: nothing in memory
    await ask("again")
    (model,) = (await pool_state()).loaded
    assert model.disk_entries == 1 and model.disk_bytes > 0
    assert model.disk_hit_rate is not None and model.disk_hit_rate > 0.5 and model.memory_hit_rate == 0
    html = (await admin_aclient.get("/pool/")).content.decode()
    assert f"memory 0.0%, disk {model.disk_hit_pct}%" in html
    assert "1 entry</div>" in html


@pytest.mark.slow
@pytest.mark.asyncio
async def test_pins_are_per_profile_when_profiles_share_weights(
    admin_aclient: AsyncClient, worker: str, tiny: Profile
) -> None:
    twin = await Profile.objects.acreate(name="tiny-twin", model_path=tiny.model_path)
    await admin_aclient.post("/pool/tiny-chat/load/", headers=HTMX)

    async def engine_pinned() -> bool:
        body = (await admin_aclient.get("/api/pool")).json()
        (model,) = body["loaded"]
        return bool(model["pinned"])

    html = (await admin_aclient.post("/pool/tiny-chat/pin/", headers=HTMX)).content.decode()
    # One row for the shared weights, each profile with its own pin state and button.
    assert '<li><code>tiny-chat</code> <span class="badge">pinned</span></li>' in html
    assert "<li><code>tiny-twin</code></li>" in html
    assert 'aria-label="Unpin tiny-chat"' in html and 'aria-label="Pin tiny-twin"' in html
    assert await engine_pinned()

    await admin_aclient.post("/pool/tiny-twin/pin/", headers=HTMX)
    html = (await admin_aclient.post("/pool/tiny-chat/unpin/", headers=HTMX)).content.decode()
    assert "Unpinned tiny-chat; its weights stay pinned for tiny-twin." in html
    assert 'aria-label="Pin tiny-chat"' in html and 'aria-label="Unpin tiny-twin"' in html
    assert await engine_pinned()  # still pinned: tiny-twin is
    await twin.arefresh_from_db()
    await tiny.arefresh_from_db()
    assert (tiny.pinned, twin.pinned) == (False, True)

    html = (await admin_aclient.post("/pool/tiny-twin/unpin/", headers=HTMX)).content.decode()
    assert "Unpinned tiny-twin." in html and 'badge">pinned' not in html
    assert not await engine_pinned()
