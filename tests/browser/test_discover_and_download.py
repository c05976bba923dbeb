"""Discover → model page → download with live progress → pause/resume → Local models, in a
real browser (Debian's chromium through Playwright) against `manage.py serve` whose hub is
the fake hub of the downloads tests (throttled, so progress is visible).

Saves discover.png, model.png, downloads.png and local-models.png in docs/screenshots/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.browser.conftest import ADMIN, NEEDS_CHROMIUM, log_in, shot
from tests.conftest import free_port, manage
from tests.mlxmanager.downloads.conftest import add_standard_repos, payload
from tests.mlxmanager.downloads.fakehub import FakeHub

pytestmark = [
    pytest.mark.slow,
    NEEDS_CHROMIUM,
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

ROOT = Path(__file__).resolve().parents[2]
MODEL = "mlx-community/Qwen3-4B-Instruct-2507-4bit"
MiB = 1024 * 1024


def add_showcase_repo(hub: FakeHub) -> None:
    """A model big enough (for a fake) that its progress is visible for a few seconds."""
    from tests.mlxmanager.downloads.conftest import QWEN_TEMPLATE

    hub.add_repo(
        MODEL,
        {
            "config.json": {
                "model_type": "qwen3",
                "architectures": ["Qwen3ForCausalLM"],
                "quantization": {"group_size": 64, "bits": 4},
                "max_position_embeddings": 262144,
                "torch_dtype": "bfloat16",
            },
            "tokenizer_config.json": {"chat_template": QWEN_TEMPLATE},
            "tokenizer.json": {"version": "1.0"},
            "model-00001-of-00002.safetensors": payload(5 * MiB, 11),
            "model-00002-of-00002.safetensors": payload(3 * MiB, 12),
            "README.md": "# Qwen3 4B Instruct 2507, MLX 4-bit\n",
        },
        tags=["mlx", "safetensors", "qwen3", "text-generation", "conversational"],
        library_name="mlx",
        pipeline_tag="text-generation",
        downloads=184_000,
        likes=95,
        parameters={"BF16": 400_000, "U32": 2_000_000},
        last_modified=datetime(2025, 8, 6, tzinfo=UTC),
    )


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    fake = FakeHub().start()
    add_standard_repos(fake)
    add_showcase_repo(fake)
    yield fake
    fake.stop()


@dataclass
class Server:
    url: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def server(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("downloads-browser")
    port = free_port()
    env = {
        **os.environ,
        "MLXM_DATA_DIR": str(data),
        "MLXM_PORT": str(port),
        "MLXM_HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(data / "hf-cache"),
        "MLXM_MEMORY_LIMIT_BYTES": str(48 * 1024**3),
        "MLXM_LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "mlxmanager.settings",
    }
    for name in ("DATABASE_URL", "HF_TOKEN", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    manage("migrate", "--noinput", "-v0", env=env)
    manage("create_admin", "--username", ADMIN[0], "--password-stdin", env=env, stdin=ADMIN[1] + "\n")
    log = (data / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--no-worker"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/login/", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError((data / "serve.log").read_text())
    yield Server(url=url, env=env)
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


@pytest.fixture
def page(open_page, server: Server):  # type: ignore[no-untyped-def]
    page = open_page(allowed=(400,), timeout_ms=20_000)  # one 400: deleting a model a profile uses
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, server.url)
    return page


def progress(page) -> int:  # type: ignore[no-untyped-def]
    return int(
        page.locator(f"#downloads-panel tr:has-text('{MODEL}') [role=progressbar]").get_attribute(
            "aria-valuenow"
        )
    )


def test_discover_download_and_local_models(server: Server, hub: FakeHub, page) -> None:  # type: ignore[no-untyped-def]
    # --- Discover: search as you type, filters re-render the results in place ----------
    page.get_by_role("link", name="Discover").click()
    expect(page.get_by_role("heading", name="Discover models")).to_be_visible()
    results = page.locator("#results tbody tr")
    expect(results.first).to_contain_text(MODEL)  # most downloads first
    page.get_by_label("Search").fill("qwen")
    expect(results).to_have_count(3)
    expect(page).to_have_url(re.compile(r"q=qwen"))
    page.get_by_label("Type").select_option("text")
    expect(results).to_have_count(2)
    page.get_by_label("Type").select_option("")
    expect(results).to_have_count(3)
    shot(page, "discover.png")

    # --- The model page: facts read from config.json and the chat template --------------
    page.get_by_role("link", name=MODEL).click()
    expect(page.get_by_role("heading", name=MODEL)).to_be_visible()
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text("Qwen3ForCausalLM")
    expect(facts).to_contain_text("4-bit, group size 64")
    expect(facts).to_contain_text("262144 tokens")
    expect(facts.locator(".badge", has_text="tools")).to_be_visible()
    expect(facts.locator(".badge", has_text="thinking")).to_be_visible()
    expect(page.locator("#download-box .badge.ok")).to_have_text("fits")
    shot(page, "model.png")

    # --- Download: live progress over server-sent events, pause and resume --------------
    hub.throttle = 700_000  # bytes/s: about ten seconds for this model
    page.get_by_role("button", name="Download").click()
    expect(page).to_have_url(server.url + "/downloads/")
    row = page.locator("#downloads-panel tr", has_text=MODEL)
    expect(row.locator(".badge")).to_have_text("downloading")
    deadline = time.monotonic() + 30
    while not 25 <= progress(page) <= 75:  # pushed by the server, no reload
        assert time.monotonic() < deadline, "no visible progress"
        time.sleep(0.1)
    expect(row).to_contain_text("/s")
    shot(page, "downloads.png")

    while not 55 <= progress(page) <= 85:  # inside the big shard, a whole chunk written
        assert time.monotonic() < deadline, "the download stalled"
        time.sleep(0.1)
    row.get_by_role("button", name="Pause").click()
    expect(row.locator(".badge")).to_have_text("paused")
    paused_at = progress(page)
    assert 0 < paused_at < 100
    time.sleep(2)  # the worker lets go after its next 1 MiB chunk (1.5 s at this speed)
    row.get_by_role("button", name="Resume").click()
    expect(row.locator(".badge")).to_have_text("downloading")
    hub.throttle = None
    expect(row.locator(".badge")).to_have_text("completed", timeout=30_000)
    resumed = [s for f in hub.repos[MODEL].files.values() for s in hub.ranges(f"/cdn/{f.sha256}")]
    assert any(start > 0 for start in resumed), (
        f"the resume continued with a Range request: {[(r.method, r.path, r.range) for r in hub.requests]}"
    )

    # --- Local models: the download is there; a profile that uses it blocks deletion ----
    page.get_by_role("link", name="Local models").click()
    expect(page.get_by_role("heading", name="Local models")).to_be_visible()
    model_row = page.locator("#local-panel tr", has_text=MODEL)
    expect(model_row).to_contain_text("4-bit, group size 64")
    path = model_row.locator(".path code").inner_text()
    manage(
        "shell",
        "-c",
        "from mlxmanager.profiles.models import Profile; "
        f"Profile.objects.create(name='qwen3-4b', model_path={path!r}, description='Qwen3 4B')",
        env=server.env,
    )
    page.reload()
    model_row = page.locator("#local-panel tr", has_text=MODEL)
    expect(model_row.locator(".badge")).to_have_text("qwen3-4b")
    model_row.get_by_role("button", name="Delete").click()
    expect(page.locator("#local-panel [role=alert]")).to_contain_text(
        "the profile qwen3-4b uses it. Change or delete the profile first."
    )
    assert Path(path).is_dir()
    shot(page, "local-models.png")
