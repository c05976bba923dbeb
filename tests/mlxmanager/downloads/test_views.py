"""The pages: Discover, a model, Downloads (with its server-sent events), Local models."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from mlxmanager.downloads import services, storage, views
from mlxmanager.downloads.models import Conversion, Download
from mlxmanager.profiles.models import Profile
from tests.mlxmanager.downloads.conftest import BIG, BIN_ONLY, EMBED, QWEN, VISION, make_model_dir, wait_for

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
PAGES = ["/models/discover/", f"/models/discover/{QWEN}/", "/downloads/", "/models/local/"]


# --- access ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*PAGES, "/downloads/events/"])
def test_pages_need_login(client: Client, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 302 and resp["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("path", PAGES)
def test_members_get_403(member_client: Client, path: str) -> None:
    assert member_client.get(path).status_code == 403


@pytest.mark.parametrize(
    "path", ["/downloads/", "/downloads/1/pause/", "/models/local/0123456789abcdef/delete/"]
)
def test_members_cannot_post(member_client: Client, path: str) -> None:
    assert member_client.post(path, {"repo_id": QWEN}).status_code == 403
    assert not Download.objects.exists()


def test_nav_links_only_for_admins(admin_client: Client, member_client: Client) -> None:
    assert 'href="/models/discover/"' not in member_client.get("/keys/").content.decode()
    html = admin_client.get("/downloads/").content.decode()
    for href in (
        'href="/models/discover/"',
        'href="/downloads/" aria-current="page"',
        'href="/models/local/"',
    ):
        assert href in html


# --- discover ------------------------------------------------------------------------


def test_discover_page_renders_without_asking_the_hub(admin_client: Client, fakehub) -> None:
    resp = admin_client.get("/models/discover/?q=qwen")
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "<h1>Discover models</h1>" in html
    assert '<div id="results" aria-busy="true">' in html and "Searching the hub…" in html
    assert "js/discover.js" in html and 'role="status"' in html and 'value="qwen"' in html
    assert not fakehub.requests  # the results come from the page's script, in the background


def test_discover_lists_mlx_models(admin_client: Client) -> None:
    resp = admin_client.get("/models/discover/", **HTMX)
    assert resp.status_code == 200
    html = resp.content.decode()
    assert f'href="/models/discover/{QWEN}/"' in html
    assert "50k" in html  # downloads, compact
    assert "acme/pytorch-only" not in html  # MLX-ready only by default
    assert 'name="mlx" checked' in admin_client.get("/models/discover/").content.decode()


def test_discover_search_with_htmx_returns_the_results_only(admin_client: Client) -> None:
    resp = admin_client.get("/models/discover/?q=qwen&type=vision&sort=downloads&limit=30&mlx=on", **HTMX)
    html = resp.content.decode()
    assert resp.status_code == 200
    assert html.lstrip().startswith('<div id="results">') and "<html" not in html
    assert VISION in html and QWEN not in html


def test_discover_quantization_filter(admin_client: Client) -> None:
    url = "/models/discover/?q=&sort=downloads&limit=30&mlx=on&quant=bf16"
    html = admin_client.get(url, **HTMX).content.decode()
    assert EMBED in html and QWEN not in html
    page = admin_client.get(url).content.decode()
    assert '<option value="bf16" selected>' in page and "bfloat16 (not quantized)" in page


def test_discover_unchecking_mlx_only(admin_client: Client) -> None:
    url = "/models/discover/?q=&sort=downloads&limit=30"
    assert BIN_ONLY in admin_client.get(url, **HTMX).content.decode()
    assert 'name="mlx" checked' not in admin_client.get(url).content.decode()


def test_discover_shows_hub_errors_inline(admin_client: Client, fakehub, settings) -> None:
    settings.MLXM_HF_TIMEOUT = 0.3
    fakehub.inject(503, path_contains="/api/models", times=1)  # retried after 1 s: too late
    resp = admin_client.get("/models/discover/", **HTMX)
    assert resp.status_code == 200
    html = resp.content.decode()
    assert 'role="alert"' in html and "did not answer within 0.3 s" in html
    assert "<table" not in html and ">Retry</button>" in html and "data-retry" in html
    wait_for(lambda: len(fakehub.gets("/api/models")) == 2)  # the abandoned call ends first


def test_discover_with_an_unreachable_hub_says_what_to_check(admin_client: Client, fakehub) -> None:
    fakehub.stop()
    resp = admin_client.get("/models/discover/?q=qwen", **HTMX)
    assert resp.status_code == 200
    html = resp.content.decode()
    assert html.count('role="alert"') == 1 and ">Retry</button>" in html
    assert f"Cannot reach the hub at {fakehub.url}" in html and "refused the connection" in html
    for what in ("MLXM_HF_ENDPOINT", "HTTPS_PROXY", "token"):
        assert what in html, what
    assert "Errno" not in html and "Searching" not in html
    from mlxmanager.downloads import hub

    assert hub.wait_idle(0)  # failed before huggingface_hub started its retries


def test_discover_offers_add_by_repo_id_and_a_local_folder(admin_client: Client) -> None:
    html = admin_client.get("/models/discover/").content.decode()
    assert 'action="/models/open/"' in html and 'name="repo_id"' in html
    assert 'action="/profiles/new/"' in html and 'name="path"' in html


def test_add_by_repo_id_opens_the_model_page(admin_client: Client) -> None:
    resp = admin_client.get("/models/open/", {"repo_id": f"  {QWEN}/ "})
    assert resp.status_code == 302 and resp["Location"] == f"/models/discover/{QWEN}/"
    bad = admin_client.get("/models/open/", {"repo_id": "not a repo id"})
    assert bad.status_code == 400
    html = bad.content.decode()
    assert "is not a valid model id (expected org/name)" in html and 'role="alert"' in html
    assert 'value="not a repo id"' in html


# --- model page ---------------------------------------------------------------------


def test_model_page_shows_the_facts(admin_client: Client) -> None:
    resp = admin_client.get(f"/models/discover/{QWEN}/")
    assert resp.status_code == 200
    html = resp.content.decode()
    for text in (
        "Qwen3ForCausalLM",
        "4-bit, group size 64",
        "40960 tokens",
        'badge">tools',
        'badge">thinking',
        'badge ok">fits',
        "skipped (not used by MLX)",
        'name="repo_id" value="mlx-community/Qwen3-0.6B-4bit"',
        ">Download</button>",
        "a profile of it answers <code>/v1/chat/completions</code>",
    ):
        assert text in html, text
    assert 'aria-current="page">Discover' in html
    vision = admin_client.get(f"/models/discover/{VISION}/").content.decode()
    assert "Vision" in vision and "<code>/v1/chat/completions (with images)</code>" in vision
    embed = admin_client.get(f"/models/discover/{EMBED}/").content.decode()
    assert "<code>/v1/embeddings</code>" in embed


def test_model_page_for_a_model_too_large(admin_client: Client, settings) -> None:
    settings.MLXM_MEMORY_LIMIT_BYTES = 1000
    assert 'badge bad">too large' in admin_client.get(f"/models/discover/{EMBED}/").content.decode()


def test_model_page_with_an_unreachable_hub_offers_a_retry(admin_client: Client, fakehub) -> None:
    fakehub.stop()
    resp = admin_client.get(f"/models/discover/{QWEN}/")
    assert resp.status_code == 200  # a message on the page, not an error page
    html = resp.content.decode()
    assert f"Cannot reach the hub at {fakehub.url}" in html and "MLXM_HF_ENDPOINT" in html
    assert f'href="/models/discover/{QWEN}/">Retry</a>' in html and "Errno" not in html


def test_model_page_unknown_repo(admin_client: Client) -> None:
    resp = admin_client.get("/models/discover/nobody/nothing/")
    assert resp.status_code == 404
    assert "was not found on the hub" in resp.content.decode()


def test_download_button_starts_a_download(admin_client: Client, admin) -> None:
    resp = admin_client.post("/downloads/", {"repo_id": QWEN, "revision": "main"}, **HTMX)
    assert resp.status_code == 200 and resp["HX-Redirect"] == "/downloads/"
    d = Download.objects.get()
    assert d.repo_id == QWEN and d.created_by == admin and d.status == "queued"
    html = admin_client.get(f"/models/discover/{QWEN}/").content.decode()
    assert "See progress" in html and ">Download</button>" not in html


def test_download_without_htmx_redirects(admin_client: Client) -> None:
    resp = admin_client.post("/downloads/", {"repo_id": QWEN})
    assert resp.status_code == 302 and resp["Location"] == "/downloads/"


def test_download_error_is_shown_in_the_box(admin_client: Client) -> None:
    resp = admin_client.post("/downloads/", {"repo_id": BIN_ONLY}, **HTMX)
    assert resp.status_code == 400  # htmx swaps 400s in
    html = resp.content.decode()
    assert html.lstrip().startswith('<section class="card" id="download-box">')
    assert "no MLX weights" in html and 'role="alert"' in html


def test_download_error_without_htmx_renders_the_page(admin_client: Client, monkeypatch) -> None:
    monkeypatch.setattr(storage, "free_bytes", lambda path: 0)
    resp = admin_client.post("/downloads/", {"repo_id": QWEN})
    assert resp.status_code == 507
    assert "Not enough disk space" in resp.content.decode() and "<html" in resp.content.decode()


# --- downloads page ------------------------------------------------------------------


def test_downloads_page_lists_downloads_with_actions(admin_client: Client) -> None:
    queued = services.download_create(repo_id=QWEN)
    paused = services.download_create(repo_id=BIG)
    services.download_pause(download_id=paused.pk)
    Download.objects.filter(pk=paused.pk).update(bytes_done=350_000)
    html = admin_client.get("/downloads/").content.decode()
    assert 'sse-connect="/downloads/events/"' in html and "hx-sse-2" in html
    assert f"/downloads/{queued.pk}/pause/" in html and f"/downloads/{queued.pk}/cancel/" in html
    assert f"/downloads/{paused.pk}/resume/" in html
    assert 'aria-valuenow="50"' in html  # 350 kB of 700 kB
    assert "The downloader is not running" in html  # queued work and no heartbeat


def test_downloads_page_without_warning_when_the_worker_runs(admin_client: Client) -> None:
    from mlxmanager.downloads import selectors

    services.download_create(repo_id=QWEN)
    selectors.heartbeat_path().touch()
    assert "not running" not in admin_client.get("/downloads/").content.decode()


def test_empty_downloads_page(admin_client: Client) -> None:
    assert "No downloads yet" in admin_client.get("/downloads/").content.decode()


@pytest.mark.parametrize(("action", "status"), [("pause", "paused"), ("cancel", "cancelled")])
def test_actions_with_htmx_return_the_panel(admin_client: Client, action: str, status: str) -> None:
    d = services.download_create(repo_id=QWEN)
    resp = admin_client.post(f"/downloads/{d.pk}/{action}/", **HTMX)
    assert resp.status_code == 200
    html = resp.content.decode()
    assert html.lstrip().startswith('<div id="downloads-panel">') and "<html" not in html
    assert Download.objects.get().status == status


def test_action_errors_are_shown(admin_client: Client) -> None:
    d = services.download_create(repo_id=QWEN)
    resp = admin_client.post(f"/downloads/{d.pk}/remove/", **HTMX)
    assert resp.status_code == 400
    assert "cancel it first" in resp.content.decode()
    resp = admin_client.post(f"/downloads/{d.pk}/remove/")
    assert resp.status_code == 409


def test_action_without_htmx_redirects(admin_client: Client) -> None:
    d = services.download_create(repo_id=QWEN)
    resp = admin_client.post(f"/downloads/{d.pk}/pause/")
    assert resp.status_code == 302 and resp["Location"] == "/downloads/"


def test_unknown_action_and_get_are_refused(admin_client: Client) -> None:
    d = services.download_create(repo_id=QWEN)
    assert admin_client.post(f"/downloads/{d.pk}/explode/").status_code == 404
    assert admin_client.get(f"/downloads/{d.pk}/pause/").status_code == 405


def test_downloads_page_queries_do_not_grow(admin_client: Client) -> None:
    for i in range(2):
        Download.objects.create(repo_id=f"org/m{i}", local_dir=f"/x/{i}")
    with CaptureQueriesContext(connection) as few:
        admin_client.get("/downloads/", **HTMX)
    for i in range(2, 20):
        Download.objects.create(repo_id=f"org/m{i}", local_dir=f"/x/{i}")
    with CaptureQueriesContext(connection) as many:
        html = admin_client.get("/downloads/", **HTMX).content.decode()
    assert html.count('<tr id="download-') == 20
    assert len(many.captured_queries) == len(few.captured_queries)


# --- server-sent events --------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_events_stream_the_panel_and_push_changes(admin, monkeypatch) -> None:
    monkeypatch.setattr(views, "SSE_POLL_SECONDS", 0.05)
    client = AsyncClient()
    await client.aforce_login(admin)
    d = await asyncio.to_thread(services.download_create, repo_id=QWEN)

    resp = await client.get("/downloads/events/")
    assert resp.status_code == 200
    assert resp["Content-Type"] == "text/event-stream" and resp["Cache-Control"] == "no-cache"
    stream = aiter(resp.streaming_content)
    assert await anext(stream) == b"retry: 2000\n\n"
    first = (await anext(stream)).decode()
    assert first.startswith("event: downloads\ndata: ")
    assert first.endswith("\n\n") and 'data: <div id="downloads-panel">' in first
    assert "0%" in first and QWEN in first

    await asyncio.to_thread(services.download_pause, download_id=d.pk)
    second = (await asyncio.wait_for(anext(stream), timeout=5)).decode()
    assert 'badge status-paused">paused' in second
    await stream.aclose()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_events_are_for_admins_only(member) -> None:
    client = AsyncClient()
    await client.aforce_login(member)
    assert (await client.get("/downloads/events/")).status_code == 403


# --- local models ----------------------------------------------------------------------


def test_local_models_page(admin_client: Client, hub_settings) -> None:
    used = make_model_dir(hub_settings["models"] / "org--used")
    make_model_dir(hub_settings["models"] / "org--free")
    Profile.objects.create(name="chat", model_path=str(used))
    html = admin_client.get("/models/local/").content.decode()
    assert "org--used" in html and "org--free" in html
    assert 'badge">chat' in html
    assert html.count(">Delete</button>") == 2
    # From a model to serving: a profile of each, and Load for the profile using one.
    assert html.count(">Create profile</a>") == 2
    assert f'href="/profiles/new/?path={quote(str(used))}"' in html
    assert 'action="/pool/chat/load/"' in html and html.count(">Load</button>") == 1
    # Deleting names the profiles that use the model before anything happens.
    assert "The profile chat uses it: change or delete it first." in html


def test_local_models_update_live(admin_client: Client, hub_settings) -> None:
    make_model_dir(hub_settings["models"] / "org--first")
    html = admin_client.get("/models/local/").content.decode()
    poll = re.search(r'hx-get="/models/local/\?list=(\w+)" hx-trigger="every 4s"', html)
    assert poll is not None
    unchanged = admin_client.get(f"/models/local/?list={poll.group(1)}", **HTMX)
    assert unchanged.status_code == 204  # htmx swaps nothing: focus and scroll stay put
    make_model_dir(hub_settings["models"] / "org--second")
    changed = admin_client.get(f"/models/local/?list={poll.group(1)}", **HTMX)
    body = changed.content.decode()
    assert changed.status_code == 200 and body.lstrip().startswith('<div id="local-list"')
    assert "org--second" in body and poll.group(1) not in body


def test_the_converter_offers_only_what_mlx_lm_converts(admin_client: Client, hub_settings) -> None:
    models = hub_settings["models"]
    make_model_dir(models / "org--llama-hf", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    make_model_dir(
        models / "org--llama-4bit",
        {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "quantization": {"bits": 4, "group_size": 64},
        },
    )
    make_model_dir(
        models / "org--whisper",
        {"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]},
    )
    make_model_dir(models / "org--kokoro", {"model_type": "kokoro", "istftnet": {}})
    make_model_dir(models / "org--bert", {"model_type": "bert", "architectures": ["BertModel"]})
    html = admin_client.get("/models/local/").content.decode()
    form = html[html.index('<section id="convert-form"') :]
    options = re.findall(r'<option value="([^"]+)"[^>]*>([^<]+)</option>', form.split("</select>")[0])
    assert [label.split(" — ")[0] for _, label in options] == ["org--llama-hf"]


def test_local_model_delete_refused_with_a_message(admin_client: Client, hub_settings) -> None:
    from mlxmanager.downloads import selectors

    used = make_model_dir(hub_settings["models"] / "org--used")
    Profile.objects.create(name="chat", model_path=str(used))
    (m,) = selectors.local_model_list()
    resp = admin_client.post(f"/models/local/{m.id}/delete/", **HTMX)
    assert resp.status_code == 400
    assert "the profile chat uses it. Change or delete the profile first." in resp.content.decode()
    assert used.exists()
    assert admin_client.post(f"/models/local/{m.id}/delete/").status_code == 409


def test_local_model_delete(admin_client: Client, hub_settings) -> None:
    from mlxmanager.downloads import selectors

    path = make_model_dir(hub_settings["models"] / "org--free")
    (m,) = selectors.local_model_list()
    resp = admin_client.post(f"/models/local/{m.id}/delete/", **HTMX)
    assert resp.status_code == 200
    assert "Deleted org--free" in resp.content.decode() and not Path(path).exists()
    assert admin_client.post(f"/models/local/{m.id}/delete/").status_code == 404


def test_empty_local_models_page(admin_client: Client) -> None:
    assert "No models on disk yet" in admin_client.get("/models/local/").content.decode()


def test_discover_hub_token_form_saves_encrypted_and_never_shows_it(admin_client: Client, settings) -> None:
    from mlxmanager.downloads.models import HubToken

    settings.MLXM_HF_TOKEN = None
    assert "none (public models only)" in admin_client.get("/models/discover/").content.decode()
    resp = admin_client.post("/models/hub-token/", {"token": "hf_pagetoken_4321", "action": "set"}, **HTMX)
    html = resp.content.decode()
    assert resp.status_code == 200 and html.lstrip().startswith('<details id="hub-token"')
    assert "Token saved (encrypted)." in html and "saved (…4321)" in html and "hf_pagetoken_4321" not in html
    assert "hf_pagetoken_4321" not in HubToken.objects.get().secret_jwe
    bad = admin_client.post("/models/hub-token/", {"token": "not a token", "action": "set"}, **HTMX)
    assert bad.status_code == 400 and 'role="alert"' in bad.content.decode()
    gone = admin_client.post("/models/hub-token/", {"action": "clear"})
    assert gone.status_code == 302 and not HubToken.objects.exists()


def test_discover_hub_token_form_is_for_admins_only(member_client: Client) -> None:
    assert member_client.post("/models/hub-token/", {"token": "hf_x"}).status_code == 403


def test_convert_form_on_local_models_queues_and_the_downloads_page_shows_it(
    admin_client: Client, tmp_path: Path
) -> None:
    import json as _json

    page = admin_client.get("/models/local/").content.decode()
    assert "Convert a transformers checkpoint to MLX" in page
    bad = admin_client.post(
        "/models/convert/", {"source_other": str(tmp_path / "missing"), "name": "x"}, **HTMX
    )
    assert bad.status_code == 400 and 'role="alert"' in bad.content.decode()
    assert "is not a folder" in bad.content.decode()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(_json.dumps({"model_type": "llama"}))
    (ckpt / "model.safetensors").write_bytes(b"x")
    ok = admin_client.post(
        "/models/convert/", {"source_other": str(ckpt), "name": "ckpt-8bit", "q_bits": "8"}
    )
    assert ok.status_code == 302 and ok["Location"] == "/downloads/"
    html = admin_client.get("/downloads/").content.decode()
    assert "ckpt-8bit" in html and "8-bit, group size 64" in html and "queued" in html


def _failed_conversion(tmp_path: Path, name: str = "ckpt-4bit") -> Conversion:
    ckpt = make_model_dir(tmp_path / "ckpt", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    conversion = services.conversion_create(source=str(ckpt), name=name, q_bits=4)
    Conversion.objects.filter(pk=conversion.pk).update(status=Conversion.Status.FAILED, error="out of memory")
    return conversion


def test_a_failed_conversion_can_be_retried(admin_client: Client, tmp_path: Path) -> None:
    failed = _failed_conversion(tmp_path)
    page = admin_client.get("/downloads/").content.decode()
    assert (
        f'hx-post="/conversions/{failed.pk}/retry/"' in page
        and f'hx-post="/conversions/{failed.pk}/dismiss/"' in page
    )
    resp = admin_client.post(f"/conversions/{failed.pk}/retry/", **HTMX)
    assert resp.status_code == 200
    (again,) = Conversion.objects.all()
    assert again.pk != failed.pk and again.status == "queued" and again.error == ""
    assert (again.source, again.name, again.q_bits) == (failed.source, failed.name, 4)
    assert "ckpt-4bit" in resp.content.decode() and "queued" in resp.content.decode()
    refused = admin_client.post(f"/conversions/{again.pk}/retry/", **HTMX)
    assert (
        refused.status_code == 400 and "only a failed or cancelled one is retried" in refused.content.decode()
    )


def test_a_failed_conversion_can_be_dismissed(admin_client: Client, tmp_path: Path) -> None:
    failed = _failed_conversion(tmp_path)
    resp = admin_client.post(f"/conversions/{failed.pk}/dismiss/")
    assert resp.status_code == 302 and not Conversion.objects.exists()
    assert admin_client.post(f"/conversions/{failed.pk}/dismiss/").status_code == 400
    queued = services.conversion_create(source=str(tmp_path / "ckpt"), name="other")
    busy = admin_client.post(f"/conversions/{queued.pk}/dismiss/", **HTMX)
    assert busy.status_code == 400 and "cancel it first" in busy.content.decode()
    assert admin_client.post(f"/conversions/{queued.pk}/explode/").status_code == 404


def test_a_finished_download_offers_create_profile_and_load(admin_client: Client, hub_settings) -> None:
    local = make_model_dir(hub_settings["models"] / "org--done")
    Download.objects.create(repo_id="org/done", local_dir=str(local), status=Download.Status.COMPLETED)
    html = admin_client.get("/downloads/").content.decode()
    assert f'href="/profiles/new/?path={quote(str(local))}"' in html and ">Load</button>" not in html
    Profile.objects.create(name="done-chat", model_path=str(local))
    html = admin_client.get("/downloads/").content.decode()
    assert 'action="/pool/done-chat/load/"' in html and ">Load</button>" in html
