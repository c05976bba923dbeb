"""The admin's day in a real browser (Debian's chromium through Playwright), live gateway:

profiles → create "tiny-chat" from the model picker → load it in the pool → chat in the
playground (streamed text, Stop on a long answer) → the chat is saved and reopens → unload.
Saves profiles.png, profile-form.png, pool.png and playground.png in docs/screenshots/.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, log_in, shot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("live"),
    NEEDS_CHROMIUM,
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect


@pytest.fixture
def page(open_page, gateway):  # type: ignore[no-untyped-def]
    page = open_page(height=860, timeout_ms=20_000)
    log_in(page, gateway.url)
    return page


def test_profile_pool_playground_walk(gateway, page, demo_models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    tiny_dir = str(demo_models["tiny-random"])

    # --- Profiles: the list, then a new profile from the model picker ------------
    page.get_by_role("link", name="Profiles").click()
    expect(page.get_by_role("heading", name="Profiles")).to_be_visible()
    expect(
        page.locator("tr", has=page.get_by_text("tiny-random", exact=True)).locator(".badge.warn")
    ).to_have_text("test model")
    page.get_by_role("link", name="New profile").click()
    expect(page.get_by_role("heading", name="New profile")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("tiny-chat")
    picker = page.get_by_label("Model", exact=True)
    expect(picker.locator(f'option[value="{tiny_dir}"]')).to_have_count(1)  # offered by the picker
    picker.select_option(value=tiny_dir)
    page.get_by_label("Description").fill("Tiny random model for the playground walk")
    page.get_by_label("Temperature").fill("0.8")
    page.get_by_label("Max tokens").fill("48")
    page.get_by_label("System prompt").fill("You are a tiny test model.")
    page.get_by_label("Keep alive (seconds)").fill("3600")
    shot(page, "profile-form.png")
    page.get_by_role("button", name="Create profile").click()

    expect(page.get_by_role("status")).to_have_text("Created profile tiny-chat.")
    row = page.locator("#profiles-table tr", has=page.get_by_text("tiny-chat", exact=True))
    expect(row.locator(".badge.warn")).to_have_text("test model")  # read from the model's config
    expect(row).to_contain_text("temperature=0.8")
    shot(page, "profiles.png")

    # --- Pool: load it --------------------------------------------------------------
    page.get_by_role("link", name="Pool").click()
    expect(page.get_by_role("heading", name="Model pool")).to_be_visible()
    shared = page.locator("#loaded-models tr", has_text="tiny-chat")
    if shared.count():  # earlier tests loaded these weights for the tiny-random profile
        page.once("dialog", lambda d: d.accept())  # "Unload …?"
        shared.get_by_role("button", name=re.compile(r"^Unload ")).click()
    page.get_by_role("button", name="Load tiny-chat").click()
    expect(page.locator("#pool-message")).to_have_text("Loaded tiny-chat.")
    loaded = page.locator('#loaded-models tr[data-model="tiny-chat"]')
    expect(loaded).to_be_visible()
    expect(loaded.get_by_role("button", name="Unload tiny-chat")).to_be_visible()
    # The live stream keeps swapping the table in (no page reload, no polling script).
    # (Polled from here: the page's Content-Security-Policy forbids Playwright's in-page eval.)
    expect(page.locator("#pool-live")).to_have_attribute("data-updates", re.compile(r"^[1-9]\d*$"))

    # --- Playground: a streamed answer, then Stop on a long one ---------------------
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Profile").select_option("tiny-chat")
    expect(page.get_by_label("Temperature")).to_have_attribute("placeholder", "0.8 (profile)")
    page.get_by_label("Message").fill("Hello there, tiny model")
    page.get_by_role("button", name="Send").click()
    first = page.locator(".msg.assistant").nth(0)
    expect(first.locator(".content")).to_have_text(re.compile(r"\S"))
    expect(first.locator(".meta")).to_contain_text("tokens")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    # Saved after the turn: the sidebar lists it and the URL points at it.
    chat = page.locator("#conversation-list li.current a")
    expect(chat).to_have_text("Hello there, tiny model")
    expect(page).to_have_url(re.compile(r"/playground/\d+/$"))
    shot(page, "playground.png")

    page.get_by_label("Max tokens").fill("100000")
    page.get_by_label("Message").fill("Now a very long story")
    page.get_by_role("button", name="Send").click()
    second = page.locator(".msg.assistant").nth(1)
    expect(second.locator(".content")).to_have_text(re.compile(r"\S"))
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    page.get_by_role("button", name="Stop").click()
    expect(second.locator(".meta")).to_contain_text("stopped")
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()

    # --- The chat reopens from the sidebar with its whole transcript -----------------
    page.get_by_role("link", name="New chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    page.locator("#conversation-list a", has_text="Hello there, tiny model").click()
    expect(page.locator(".msg")).to_have_count(4)
    expect(page.locator(".msg.user").nth(1)).to_have_text(re.compile("Now a very long story"))
    expect(page.locator(".msg.assistant").nth(1).locator(".meta")).to_contain_text("stopped")
    expect(page.get_by_label("System prompt")).to_have_value("")  # none was typed: the profile's applies

    # --- Pool again: traffic shows, then unload ---------------------------------------
    page.get_by_role("link", name="Pool").click()
    loaded = page.locator('#loaded-models tr[data-model="tiny-chat"]')
    expect(loaded).to_be_visible()
    expect(loaded.locator("td").nth(5)).to_have_text(re.compile(r"\d+(\.\d+)?%"))  # cache hits measured
    # The charts draw from the worker's 10-second samples; the chat shows up in tokens/s.
    expect(page.locator("figure.chart svg polyline")).to_have_count(2, timeout=30_000)
    line = page.locator("figure.chart polyline").first
    deadline = time.monotonic() + 30
    while not any(float(p.split(",")[1]) < 60 for p in (line.get_attribute("points") or "").split()):
        assert time.monotonic() < deadline, "the chat never showed in the tokens/s chart"
        time.sleep(0.5)
    shot(page, "pool.png")
    page.once("dialog", lambda d: d.accept())  # "Unload tiny-chat?"
    loaded.get_by_role("button", name="Unload tiny-chat").click()
    expect(page.locator("#pool-message")).to_have_text("Unloaded tiny-chat.")
    expect(page.locator('#loaded-models tr[data-model="tiny-chat"]')).to_have_count(0)
    expect(page.get_by_role("button", name="Load tiny-chat")).to_be_visible()


def test_playground_shows_reasoning_apart_and_errors_readably(gateway, page) -> None:  # type: ignore[no-untyped-def]
    """A stand-in chat socket (Playwright's WebSocket routing) plays a reasoning model, then an error."""

    def fake_server(ws) -> None:  # type: ignore[no-untyped-def]
        def on_message(raw: str | bytes) -> None:
            msg = json.loads(raw)
            if msg["type"] != "chat":
                return
            rid = msg["id"]
            if "fail" in msg["body"]["messages"][-1]["content"]:
                err = {"message": "model 'x' is busy", "type": "invalid_request_error", "code": "overloaded"}
                ws.send(json.dumps({"type": "error", "id": rid, "error": err}))
                return
            if "apart" in msg["body"]["messages"][-1]["content"]:
                # Reasoning the server already split off arrives in its own field.
                deltas = [
                    {"text": "", "reasoning": "Thought"},
                    {"text": "", "reasoning": " apart."},
                    {"text": "Done."},
                ]
            else:
                deltas = [{"text": t} for t in ("<think>Let me", " think.</think>", "The answer", " is 42.")]
            for delta in deltas:
                ws.send(json.dumps({"type": "delta", "id": rid, **delta}))
            usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
            ws.send(json.dumps({"type": "done", "id": rid, "finish_reason": "stop", "usage": usage}))

        ws.on_message(on_message)

    page.route_web_socket(re.compile(r".*/v1/ws/chat\?token=.+"), fake_server)
    page.goto(gateway.url + "/playground/?profile=tiny-random")
    page.get_by_label("Message").fill("What is six times seven?")
    page.get_by_label("Message").press("Enter")
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".content")).to_have_text("The answer is 42.")
    reasoning = answer.locator("details.reasoning")
    expect(reasoning).to_be_visible()
    expect(reasoning.locator("div")).to_have_text("Let me think.")
    # Time to first token and decode speed as the browser measured them (instant here: no speed).
    expect(answer.locator(".meta")).to_have_text(
        re.compile(r"^TTFT \d+ ms · ([\d.]+ tokens/s · )?9 tokens · prompt 5$")
    )

    page.get_by_label("Message").fill("please fail")
    page.get_by_role("button", name="Send").click()
    failed = page.locator(".msg.assistant").last
    expect(failed.get_by_role("alert")).to_have_text("model 'x' is busy")
    expect(page.get_by_label("Message")).to_have_value("please fail")  # given back to retry

    page.get_by_label("Message").fill("reasoning apart")
    with page.expect_response(lambda r: "/api/conversations/" in r.url and r.request.method == "PATCH"):
        page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".content")).to_have_text("Done.")
    expect(answer.locator("details.reasoning div")).to_have_text("Thought apart.")

    # Reopened, the saved chat keeps reasoning apart from the answer (the failed turn was not saved).
    page.reload()
    expect(page.locator(".msg.assistant")).to_have_count(2)
    expect(page.locator(".msg.assistant details.reasoning div").first).to_have_text("Let me think.")
    expect(page.locator(".msg.assistant .content").first).to_have_text("The answer is 42.")


def test_playground_shows_tool_calls_from_the_live_model(gateway, page) -> None:  # type: ignore[no-untyped-def]
    """tiny-tools (Qwen3-style template) with tool_choice "required": constrained decoding makes
    the real model call the tool; the call streams into the transcript and is saved with the chat."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 12}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    page.goto(gateway.url + "/playground/?profile=tiny-tools")
    page.get_by_text("Tools", exact=True).click()
    page.get_by_label("Tools (JSON)").fill("[not json")
    page.get_by_label("Message").fill("Weather in Paris?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#pg-status")).to_contain_text("Tools must be JSON")
    expect(page.locator(".msg")).to_have_count(0)  # nothing sent
    expect(page.get_by_label("Message")).to_have_value("Weather in Paris?")  # kept to send again

    page.get_by_label("Tools (JSON)").fill(json.dumps(tools))
    page.get_by_label("Tool choice").select_option("required")
    page.get_by_label("Thinking").select_option("off")  # else the tiny model muses past max tokens
    page.get_by_label("Max tokens").fill("80")
    with page.expect_response(lambda r: "/api/conversations" in r.url and r.request.method == "POST"):
        page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg.assistant").last
    # The tiny model may go on to further (parallel) calls until max tokens: check the first.
    call = answer.locator(".tool-calls li code").first
    expect(call).to_have_text(re.compile(r'^get_weather\(\{"city": ?".*"\}\)$'))
    expect(answer.locator(".meta")).to_contain_text("tokens")
    text = call.inner_text()
    arguments = json.loads(text[len("get_weather(") : -1])
    assert set(arguments) == {"city"} and len(arguments["city"]) <= 12

    # The page moves to the saved chat's address once the save's answer is read: reload that.
    expect(page).to_have_url(re.compile(r"/playground/\d+/$"))
    page.reload()  # saved with the chat
    expect(page.locator(".msg.assistant .tool-calls li code").first).to_have_text(text)
