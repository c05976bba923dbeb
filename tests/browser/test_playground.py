"""The playground in a real browser against the live gateway and its worker.

Answers that a routing rule sends to the fake upstream on 127.0.0.1 (which echoes the
question) carry hostile markup, markdown and code: they render as markdown, sanitised,
with highlighted code blocks and a copy button; copy, regenerate and edit-and-resend work
per message; each answer says its TTFT and tokens/s; a reopened chat restores its profile
and settings. A vision profile (the tiny LLaVA test model, served by the real worker) takes
attached, pasted and dropped images; the speech profiles dictate and read answers aloud.

Saves playground-1400.png, playground-390.png and playground-vision.png in docs/screenshots/.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, log_in, shot
from tests.conftest import Gateway
from tests.gateway_fixtures import Admin, admin, fake_upstream, routed_gateway, uid  # noqa: F401
from tests.inference.fakes import FakeUpstream, Step

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

HOSTILE = (
    "Hi <script>window.__pwned = 'script'</script> "
    '<img src="http://127.0.0.1:9/x.png" onerror="window.__pwned = \'img\'"> '
    "[click me](javascript:window.__pwned='link') "
    "<a href=\"javascript:window.__pwned='a'\" onclick=\"window.__pwned='a'\">raw link</a> "
    "![pic](javascript:window.__pwned='pic') ![remote](http://127.0.0.1:9/remote.png) "
    "[safe](https://example.com/docs) and **bold**"
)
CODE = "Some code:\n```python\ndef greet(name):\n    return f'hi {name}'\n```\n- one\n- two"

# Attributes no element in the transcript may carry (event handlers, script URLs, styles).
UNSAFE_DOM = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('#transcript *')) {
    if (['SCRIPT', 'IFRAME', 'OBJECT', 'EMBED', 'STYLE'].includes(el.tagName)) bad.push(el.tagName);
    for (const a of el.attributes) {
      if (a.name.startsWith('on') || /^\\s*javascript:/i.test(a.value)) bad.push(`${el.tagName} ${a.name}=${a.value}`);
    }
  }
  return bad;
}"""

# The playground's elements that stick out of the window (its own part of the page).
WIDER_THAN_WINDOW = """() => [...document.querySelectorAll('#playground, #playground *')]
  .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 0.5 && el.getClientRects().length)
  .map((el) => `${el.tagName.toLowerCase()}#${el.id}.${el.className} ${Math.round(el.getBoundingClientRect().right)}px`)
  .slice(0, 8)"""


def png(color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def hostile_profile(admin: Admin, fake_upstream: FakeUpstream, demo_models: dict[str, Path]) -> str:  # noqa: F811
    """A profile whose chats a routing rule sends to the fake upstream (it echoes the question)."""
    name = uid("pg-echo")
    admin.ok("POST", "/profiles", json={"name": name, "model_path": str(demo_models["tiny-random"])})
    cred = admin.credential(fake_upstream, "openai_compatible")
    upstream_model = uid("echo")
    # A little time between streamed pieces: the answer streams, and its decode speed is measurable.
    fake_upstream.always(upstream_model, Step(chunk_delay=0.02))
    admin.rule(name, {"credential": cred["name"], "model": upstream_model})
    return name


def test_hostile_output_markdown_copy_regenerate_edit_and_reopen(
    routed_gateway: Gateway,  # noqa: F811
    fake_upstream: FakeUpstream,  # noqa: F811
    hostile_profile: str,
    open_page: Callable[..., Any],
) -> None:
    gw = routed_gateway
    page = open_page(height=900, timeout_ms=30_000)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gw.url)
    log_in(page, gw.url)
    page.goto(gw.url + "/playground/")
    page.get_by_label("Profile").select_option(hostile_profile)
    expect(page.locator("#pg-attach-label")).to_be_hidden()  # a text profile takes no images
    page.get_by_label("Temperature").fill("0.3")
    page.get_by_label("Top p").fill("0.9")
    page.get_by_label("Max tokens").fill("50")
    page.get_by_label("Thinking").select_option("off")

    # ---- Hostile output: nothing runs, nothing unsafe reaches the DOM ------------------------
    page.get_by_label("Message").fill(HOSTILE)
    page.get_by_role("button", name="Send", exact=True).click()
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".meta")).to_contain_text("tokens/s")
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()
    content = answer.locator(".content")
    expect(content).to_contain_text("<script>window.__pwned")  # shown as text, not run
    expect(content.locator("strong")).to_have_text("bold")
    safe = content.get_by_role("link", name="safe")
    expect(safe).to_have_attribute("href", "https://example.com/docs")
    expect(safe).to_have_attribute("rel", "noopener noreferrer nofollow")
    assert content.locator("script, img, a[href^='javascript']").count() == 0
    expect(content).to_contain_text("[image: remote]")  # no request for a remote image
    assert page.evaluate(UNSAFE_DOM) == []
    assert page.evaluate("window.__pwned") is None
    body = fake_upstream.calls(path="/v1/chat/completions")[-1].body or {}
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.3, 0.9, 50)
    meta = answer.locator(".meta").inner_text()
    assert re.search(r"TTFT \d+ ms", meta) and re.search(r"[\d.]+ tokens/s", meta), meta

    # ---- Markdown with a highlighted code block and its copy button ---------------------------
    page.get_by_label("Message").fill(CODE)
    page.get_by_role("button", name="Send", exact=True).click()
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".meta")).to_contain_text("tokens/s")
    block = answer.locator(".code-block")
    expect(block).to_have_count(1)
    expect(block.locator(".code-bar")).to_contain_text("python")
    expect(block.locator("code.hljs .hljs-keyword").first).to_have_text("def")
    expect(answer.locator(".content li")).to_have_count(2)
    block.get_by_role("button", name="Copy code").click()
    expect(block.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()").startswith(
        "def greet(name):\n    return f'hi {name}'"
    )
    answer.get_by_role("button", name="Copy the answer").click()
    assert page.evaluate("navigator.clipboard.readText()").startswith("echo: Some code:\n```python")
    shot_sizes(page)

    # ---- Regenerate the last answer ------------------------------------------------------------
    calls = len(fake_upstream.calls(path="/v1/chat/completions"))
    expect(page.get_by_role("button", name="Regenerate the answer")).to_have_count(1)  # the last only
    page.get_by_role("button", name="Regenerate the answer").click()
    expect(page.locator(".msg.assistant").last.locator(".meta")).to_contain_text("tokens/s")
    expect(page.locator(".msg")).to_have_count(4)
    assert len(fake_upstream.calls(path="/v1/chat/completions")) == calls + 1
    resent = fake_upstream.calls(path="/v1/chat/completions")[-1].body or {}
    assert [m["role"] for m in resent["messages"]] == ["user", "assistant", "user"]

    # ---- Edit the first question and resend: the chat goes on from there ----------------------
    page.locator(".msg.user").first.get_by_role("button", name="Edit this question").click()
    edited = page.get_by_label("Edited question")
    expect(edited).to_have_value(HOSTILE)
    edited.fill("A fresh *first* question")
    # Tools for the rest of the chat: the fake upstream calls the tool it is offered.
    page.locator("details.system", has_text="Tools").locator("summary").click()
    tools = '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]'
    page.get_by_label("Tools (JSON)").fill(tools)
    page.get_by_label("Tool choice").select_option("required")
    page.get_by_role("button", name="Save & submit").click()
    expect(page.locator(".msg")).to_have_count(2)
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".tool-calls")).to_contain_text("get_weather(")
    expect(answer.locator(".meta")).to_contain_text("called tools")
    expect(page.locator(".msg.user").first.locator(".content")).to_have_text("A fresh *first* question")
    sent = fake_upstream.calls(path="/v1/chat/completions")[-1].body or {}
    assert [m["role"] for m in sent["messages"]] == ["user"]
    assert sent["tool_choice"] == "required"

    # ---- Reopen the chat: profile, settings and transcript come back --------------------------
    expect(page).to_have_url(re.compile(r"/playground/\d+/$"))
    expect(page.locator("#conversation-list li.current")).to_contain_text("A fresh *first* question")
    page.get_by_role("link", name="New chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    page.locator("#conversation-list a", has_text="A fresh *first* question").click()
    expect(page.locator(".msg")).to_have_count(2)
    expect(page.get_by_label("Profile")).to_have_value(hostile_profile)
    expect(page.get_by_label("Temperature")).to_have_value("0.3")
    expect(page.get_by_label("Top p")).to_have_value("0.9")
    expect(page.get_by_label("Max tokens")).to_have_value("50")
    expect(page.get_by_label("Thinking")).to_have_value("off")
    expect(page.get_by_label("Tools (JSON)")).to_have_value(tools)
    expect(page.get_by_label("Tools (JSON)")).to_be_visible()
    expect(page.get_by_label("Tool choice")).to_have_value("required")
    expect(page.locator(".msg.assistant .meta")).to_contain_text("TTFT")
    assert page.evaluate(UNSAFE_DOM) == []


def shot_sizes(page: Any) -> None:
    """The playground at a wide and a phone width, and never wider than the window."""
    for width, name in ((1400, "playground-1400.png"), (390, "playground-390.png")):
        page.set_viewport_size({"width": width, "height": 900})
        page.locator(".msg.assistant").last.scroll_into_view_if_needed()
        shot(page, name)
        wide = page.evaluate(WIDER_THAN_WINDOW)
        assert wide == [], f"wider than the {width}px window: {wide}"
    page.set_viewport_size({"width": 1280, "height": 900})


def test_images_on_a_vision_profile_and_speech(
    routed_gateway: Gateway,  # noqa: F811
    open_page: Callable[..., Any],
) -> None:
    gw = routed_gateway
    page = open_page(height=900, timeout_ms=60_000)
    log_in(page, gw.url)
    page.goto(gw.url + "/playground/")
    page.get_by_label("Profile").select_option("tiny-llava")
    attach = page.locator("#pg-attach-label")
    expect(attach).to_be_visible()
    thumbs = page.locator("#pg-attachments img")

    # Attach with the file input, then take it off again.
    page.locator("#pg-attach").set_input_files({"name": "red.png", "mimeType": "image/png", "buffer": png()})
    expect(thumbs).to_have_count(1)
    page.get_by_role("button", name="Remove red.png").click()
    expect(thumbs).to_have_count(0)

    # Paste and drop: the browser's own clipboard and drag events carrying a PNG file.
    data = list(png((20, 160, 60)))
    page.get_by_label("Message").evaluate(
        """(el, bytes) => {
          const dt = new DataTransfer();
          dt.items.add(new File([new Uint8Array(bytes)], "pasted.png", { type: "image/png" }));
          el.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
        }""",
        data,
    )
    expect(thumbs).to_have_count(1)
    page.locator("#pg-composer").evaluate(
        """(el, bytes) => {
          const dt = new DataTransfer();
          dt.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
          el.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""",
        data,
    )
    expect(thumbs).to_have_count(2)
    page.get_by_role("button", name="Remove pasted.png").click()
    expect(thumbs).to_have_count(1)

    # Send it: the real worker's vision model reads the image and answers.
    page.get_by_label("Message").fill("What colour is this?")
    page.get_by_role("button", name="Send", exact=True).click()
    question = page.locator(".msg.user").last
    expect(question.locator(".images img")).to_have_count(1)
    assert question.locator(".images img").get_attribute("src").startswith("data:image/png;base64,")
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".meta")).to_contain_text("tokens", timeout=120_000)
    expect(answer.locator(".error")).to_have_count(0)
    expect(thumbs).to_have_count(0)  # sent with the message
    shot(page, "playground-vision.png")

    # The images are kept with the saved chat.
    expect(page).to_have_url(re.compile(r"/playground/\d+/$"))
    page.reload()
    expect(page.locator(".msg.user .images img")).to_have_count(1)
    expect(page.get_by_label("Profile")).to_have_value("tiny-llava")

    # A text-only profile refuses images with a clear message.
    page.get_by_label("Profile").select_option("tiny-random")
    expect(attach).to_be_hidden()
    page.locator("#pg-composer").evaluate(
        """(el, bytes) => {
          const dt = new DataTransfer();
          dt.items.add(new File([new Uint8Array(bytes)], "late.png", { type: "image/png" }));
          el.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""",
        data,
    )
    expect(page.get_by_role("status")).to_contain_text("pick a vision profile")
    expect(thumbs).to_have_count(0)

    # Read the answer aloud with the text-to-speech profile: a player with the audio.
    page.get_by_label("Read answers with").select_option("tiny-tts")
    page.locator(".msg.assistant").last.get_by_role("button", name="Read the answer aloud").click()
    player = page.locator(".msg.assistant").last.locator("audio")
    expect(player).to_have_attribute("src", re.compile(r"^blob:"), timeout=120_000)
    assert page.get_by_role("status").inner_text() == ""

    # Dictate from an audio file with the speech-to-text profile: its text lands in the box.
    from tests.inference.api.test_audio import encoded, tone

    page.get_by_label("Dictate with").select_option("tiny-whisper")
    page.locator("#pg-audio-file").set_input_files(
        {"name": "tone.wav", "mimeType": "audio/wav", "buffer": encoded(tone(1.5), 16000, "WAV")}
    )
    status = page.get_by_role("status")
    expect(status).to_have_text(
        re.compile(r"^(Transcribed: check the text and send it\.|No speech was recognised\.)$"),
        timeout=120_000,
    )
    if status.inner_text().startswith("Transcribed"):
        assert page.get_by_label("Message").input_value().strip()


def test_dictation_records_from_the_microphone(routed_gateway: Gateway, chromium: Any) -> None:  # noqa: F811
    """Record with Chromium's fake microphone (a beeping tone): the page turns the recording
    into WAV and the speech-to-text profile transcribes it, with no error anywhere."""
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

    gw = routed_gateway
    fake_mic = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    browser = chromium.browser_type.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + fake_mic
    )
    errors: list[str] = []
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(60_000)
        context.grant_permissions(["microphone"], origin=gw.url)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        log_in(page, gw.url)
        page.goto(gw.url + "/playground/")
        page.get_by_label("Dictate with").select_option("tiny-whisper")
        page.get_by_role("button", name="Record").click()
        stop = page.get_by_role("button", name="Stop recording")
        expect(stop).to_have_attribute("aria-pressed", "true")
        expect(page.get_by_role("status")).to_have_text("Recording… press Stop recording when done.")
        page.wait_for_timeout(1500)  # a second and a half of the fake microphone's tone
        stop.click()
        expect(page.get_by_role("button", name="Record")).to_have_attribute("aria-pressed", "false")
        status = page.get_by_role("status")
        expect(status).to_have_text(
            re.compile(r"^(Transcribed: check the text and send it\.|No speech was recognised\.)$"),
            timeout=120_000,
        )
        if status.inner_text().startswith("Transcribed"):
            assert page.get_by_label("Message").input_value().strip()
        context.close()
    finally:
        browser.close()
    assert not errors, errors
