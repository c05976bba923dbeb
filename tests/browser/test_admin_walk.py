"""From "I heard about a model" to "my team is using it", in one go, in a real browser.

Discover (the fake hub over real HTTP) → the model page → download with visible progress →
a profile for the downloaded model → load it in the pool → chat with it in the playground
(real tokens from the real MLX weights that were just downloaded) → unload. The served
model is the tiny-random demo model, published on the fake hub under a new name.

Saves walk-download.png and walk-playground.png in docs/screenshots/.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.browser.conftest import ADMIN, NEEDS_CHROMIUM, log_in, shot
from tests.conftest import Gateway, free_port, manage
from tests.mlxmanager.downloads.fakehub import FakeHub

pytestmark = [
    pytest.mark.slow,
    NEEDS_CHROMIUM,
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

ROOT = Path(__file__).resolve().parents[2]
REPO = "mlx-community/tiny-walk-llama-bf16"


@pytest.fixture(scope="module")
def hub(demo_models: dict[str, Path]) -> Iterator[FakeHub]:
    fake = FakeHub().start()
    source = demo_models["tiny-random"]
    files = {
        p.name: p.read_bytes() for p in sorted(source.iterdir()) if p.is_file() and not p.name.startswith(".")
    }
    fake.add_repo(
        REPO,
        files,
        tags=["mlx", "safetensors", "llama", "text-generation"],
        library_name="mlx",
        pipeline_tag="text-generation",
        downloads=1_234,
        likes=5,
        last_modified=datetime(2026, 11, 1, tzinfo=UTC),
    )
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def server(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`manage.py serve` with its worker and downloader; the hub is the fake one."""
    data = tmp_path_factory.mktemp("admin-walk")
    port = free_port()
    env = {
        **os.environ,
        "MLXM_DATA_DIR": str(data),
        "MLXM_PORT": str(port),
        "MLXM_HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(data / "hf-cache"),
        "MLXM_MEMORY_LIMIT_BYTES": str(8 * 1024**3),
        "MLXM_LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "mlxmanager.settings",
    }
    for name in ("DATABASE_URL", "HF_TOKEN", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    manage("migrate", "--noinput", "-v0", env=env)
    manage("create_admin", "--username", ADMIN[0], "--password-stdin", env=env, stdin=ADMIN[1] + "\n")
    log_path = data / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve"],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    gw = Gateway(url=f"http://127.0.0.1:{port}", key="", data_dir=data, proc=proc, log_path=log_path)
    try:
        gw.wait_healthy()
        yield gw
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def page(open_page, server: Gateway):  # type: ignore[no-untyped-def]
    page = open_page(height=860, timeout_ms=30_000)
    log_in(page, server.url)
    return page


def test_search_download_profile_load_chat_unload(server: Gateway, hub: FakeHub, page) -> None:  # type: ignore[no-untyped-def]
    # --- Discover: find it, open its page -----------------------------------------------
    page.get_by_role("link", name="Discover").click()
    page.get_by_label("Search").fill("tiny-walk")
    results = page.locator("#results tbody tr")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("bfloat16")  # the quantization column, from the name
    page.get_by_role("link", name=REPO).click()
    expect(page.get_by_role("heading", name=REPO)).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("LlamaForCausalLM")

    # --- Download, with progress between 0 and 100 % seen on the way --------------------
    hub.throttle = 90_000  # bytes/s: the 0.6 MB of weights take about 6 s
    page.get_by_role("button", name="Download").click()
    expect(page).to_have_url(server.url + "/downloads/")
    row = page.locator("#downloads-panel tr", has_text=REPO)
    bar = row.locator("[role=progressbar]")
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while not any(0 < v < 100 for v in seen):
        assert time.monotonic() < deadline, f"no progress between 0 and 100 %: {sorted(seen)}"
        value = bar.get_attribute("aria-valuenow") if bar.count() else None
        if value is not None:
            seen.add(int(value))
        time.sleep(0.1)
    shot(page, "walk-download.png")
    hub.throttle = None
    expect(row.locator(".badge")).to_have_text("completed", timeout=60_000)

    # --- A profile for the downloaded model ---------------------------------------------
    page.get_by_role("link", name="Profiles").click()
    page.get_by_role("link", name="New profile").click()
    expect(page.get_by_role("heading", name="New profile")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("walk-chat")
    picker = page.get_by_label("Model", exact=True)
    option = picker.locator("option", has_text="tiny-walk-llama")
    expect(option).to_have_count(1)
    picker.select_option(value=option.get_attribute("value"))
    page.get_by_label("Max tokens").fill("24")
    page.get_by_role("button", name="Create profile").click()
    expect(page.get_by_role("status")).to_have_text("Created profile walk-chat.")

    # --- Load it in the pool --------------------------------------------------------------
    page.get_by_role("link", name="Pool").click()
    page.get_by_role("button", name="Load walk-chat").click()
    expect(page.locator("#pool-message")).to_have_text("Loaded walk-chat.")
    expect(page.locator('#loaded-models tr[data-model="walk-chat"]')).to_be_visible()

    # --- Chat with it: real tokens from the downloaded weights ----------------------------
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Profile").select_option("walk-chat")
    page.get_by_label("Message").fill("Hello from the walk")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg.assistant").nth(0)
    expect(answer.locator(".content")).to_have_text(re.compile(r"\S"))
    expect(answer.locator(".meta")).to_contain_text("tokens")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    shot(page, "walk-playground.png")

    # --- Unload ---------------------------------------------------------------------------
    page.get_by_role("link", name="Pool").click()
    loaded = page.locator('#loaded-models tr[data-model="walk-chat"]')
    page.once("dialog", lambda d: d.accept())  # "Unload walk-chat?"
    loaded.get_by_role("button", name="Unload walk-chat").click()
    expect(page.locator("#pool-message")).to_have_text("Unloaded walk-chat.")
    expect(loaded).to_have_count(0)
    expect(page.get_by_role("button", name="Load walk-chat")).to_be_visible()
