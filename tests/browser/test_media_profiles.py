"""Vision and speech models in the dashboard, in a real browser against the live gateway:
the Local models page names each model's type (read from its config), and a profile made
with "Detect from the model's config" takes that type; the form shows the settings of the
chosen type. Saves local-models.png and profile-form-speech.png in docs/screenshots/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, log_in, shot

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect


def test_media_models_and_profiles(gateway, open_page, demo_models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    page = open_page(allowed=(400,), height=900, timeout_ms=20_000)  # the wrong-type form is a 400
    log_in(page, gateway.url)

    # The three media models as if downloaded into the models folder (links, removed after).
    models = gateway.data_dir / "models"
    models.mkdir(exist_ok=True)
    links = [models / name for name in ("tiny-llava", "tiny-whisper", "tiny-tts")]
    try:
        for link in links:
            link.symlink_to(demo_models[link.name], target_is_directory=True)
        page.goto(gateway.url + "/models/local/")
        for name, label in (("tiny-llava", "Vision"), ("tiny-whisper", "Speech to text"),
                            ("tiny-tts", "Text to speech")):  # fmt: skip
            row = page.locator("tbody tr", has=page.get_by_text(name, exact=True)).first
            expect(row).to_contain_text(label)
        shot(page, "local-models.png")
    finally:
        for link in links:
            link.unlink(missing_ok=True)

    page.goto(gateway.url + "/profiles/new/")
    page.get_by_label("Name", exact=True).fill("my-whisper")
    page.get_by_label("Model", exact=True).select_option(value=str(demo_models["tiny-whisper"]))
    kind = page.get_by_label("Type")
    expect(kind).to_have_value("")  # detect from the model's config
    kind.select_option("tts")
    expect(page.get_by_role("group", name="Prompt & template")).to_be_hidden()
    expect(page.get_by_label("Draft model")).to_be_hidden()
    expect(page.get_by_text("Speech models use only")).to_be_visible()
    kind.select_option("")  # back to detection: the config says speech to text
    page.get_by_label("Max tokens").fill("24")
    shot(page, "profile-form-speech.png")
    page.get_by_role("button", name="Create profile").click()
    expect(page.get_by_role("status")).to_have_text("Created profile my-whisper.")
    row = page.locator("#profiles-table tr", has=page.get_by_text("my-whisper", exact=True))
    expect(row).to_contain_text("Speech to text")
    expect(row).to_contain_text("/v1/audio/transcriptions")

    # A contradiction is a readable error on the form, not a 500.
    page.goto(gateway.url + "/profiles/new/")
    page.get_by_label("Name", exact=True).fill("wrong-kind")
    page.get_by_label("Model", exact=True).select_option(value=str(demo_models["tiny-tts"]))
    page.get_by_label("Type").select_option("vision")
    page.get_by_role("button", name="Create profile").click()
    expect(page.get_by_role("alert").first).to_contain_text(
        "text-to-speech model (read from its config.json)"
    )
