"""End to end: images in chat through the official `openai` and `anthropic` SDKs against the
live gateway, served by the tiny random LLaVA (mlx-vlm, a 2-layer CLIP tower) in the worker
pool; image URLs are fetched from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import openai
import pytest
from PIL import Image

from tests.conftest import Gateway

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

VLM = "tiny-llava"
IMAGE_TOKENS = 16  # the tiny CLIP tower: (32 / 8)^2 patches per image


def picture(color: str, size: tuple[int, int] = (48, 40), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 1).save(out, fmt)
    return out.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


class _Images(BaseHTTPRequestHandler):
    files: dict[str, tuple[int, str, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, ctype, body = self.files.get(self.path, (404, "text/plain", b"no such image"))
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    _Images.files = {
        "/red.png": (200, "image/png", picture("red")),
        "/blue.jpg": (200, "image/jpeg", picture("blue", fmt="JPEG")),
        "/huge.png": (200, "image/png", b"\x89PNG" + b"\0" * (21 * 1024 * 1024)),
        "/page.html": (200, "text/html", b"<html>not an image</html>"),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def claude(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0, timeout=120)


def test_openai_chat_with_two_images_streams(gateway: Gateway, image_server: str) -> None:
    client = gateway.openai()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": data_url(picture("red"))}},
                {"type": "text", "text": "with"},
                {"type": "image_url", "image_url": {"url": image_server + "/blue.jpg", "detail": "low"}},
            ],
        }
    ]
    chunks = list(
        client.chat.completions.create(
            model=VLM, messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 6
    # Both images became image tokens in the prompt: the same text alone is 2 x 16 shorter.
    text_only = client.chat.completions.create(
        model=VLM, messages=[{"role": "user", "content": "Compare\nwith"}], max_tokens=1
    )
    assert usage.prompt_tokens - text_only.usage.prompt_tokens >= 2 * IMAGE_TOKENS


def test_the_next_turn_reuses_the_cached_prompt(gateway: Gateway) -> None:
    client = gateway.openai()
    red = data_url(picture("red", size=(30, 30)))
    turn1 = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": red}},
                                          {"type": "text", "text": "What is this?"}]}]  # fmt: skip
    first = client.chat.completions.create(model=VLM, messages=turn1, max_tokens=5, temperature=0)
    answer = first.choices[0].message.content or ""
    turn2 = [*turn1, {"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model=VLM, messages=turn2, max_tokens=5, temperature=0)
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens >= first.usage.prompt_tokens - 1
    # Another image is another prompt: nothing of the red picture's cache is used.
    turn2_blue = [{**turn2[0], "content": [{"type": "image_url", "image_url": {"url": data_url(picture("blue", size=(30, 30)))}},
                                           {"type": "text", "text": "What is this?"}]}, *turn2[1:]]  # fmt: skip
    other = client.chat.completions.create(model=VLM, messages=turn2_blue, max_tokens=5, temperature=0)
    assert (other.usage.prompt_tokens_details.cached_tokens or 0) < IMAGE_TOKENS


def test_anthropic_image_blocks_base64_and_url(gateway: Gateway, image_server: str) -> None:
    client = claude(gateway)
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(picture("green")).decode()}},
        {"type": "image", "source": {"type": "url", "url": image_server + "/red.png"}},
        {"type": "text", "text": "Describe both."},
    ]  # fmt: skip
    msg = client.messages.create(model=VLM, max_tokens=5, messages=[{"role": "user", "content": content}])
    assert msg.stop_reason == "max_tokens" and msg.content[0].type == "text"
    with client.messages.stream(
        model=VLM, max_tokens=4, messages=[{"role": "user", "content": content}]
    ) as s:
        streamed = s.get_final_message()
    assert streamed.usage.output_tokens == 4
    with_images = client.messages.count_tokens(model=VLM, messages=[{"role": "user", "content": content}])
    without = client.messages.count_tokens(
        model=VLM, messages=[{"role": "user", "content": "Describe both."}]
    )
    assert with_images.input_tokens - without.input_tokens >= 2 * IMAGE_TOKENS


def _openai_error(gateway: Gateway, url: str, model: str = VLM) -> dict:
    with pytest.raises(openai.BadRequestError) as exc:
        gateway.openai().chat.completions.create(
            model=model,
            max_tokens=2,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "hi"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],  # fmt: skip
        )
    body = exc.value.body
    assert isinstance(body, dict)
    assert body["param"] == "messages[0].content[1].image_url", body
    return body


def test_bad_images_are_clear_400s(gateway: Gateway, image_server: str) -> None:
    cases = [
        (data_url(picture("red", fmt="TIFF"), "image/tiff"), "unsupported image format TIFF"),
        (data_url(b"definitely not an image"), "could not be read"),
        (data_url(picture("red")[:60]), "could not be decoded"),
        ("data:image/png;base64,%%%", "not valid base64"),
        ("data:text/plain;base64,aGk=", "not an image"),
        ("ftp://example.com/cat.png", "http(s) or a data URL"),
        (image_server + "/missing.png", "HTTP 404"),
        (image_server + "/huge.png", "larger than 20 MB"),
        (image_server + "/page.html", "could not be read"),
        # 42 megapixels (a tiny bilevel PNG): refused from its header, never decoded.
        (data_url(picture("red", size=(7000, 6000), mode="1")), "7000x6000 pixels"),
    ]
    for url, words in cases:
        body = _openai_error(gateway, url)
        assert words in body["message"], (words, body)
        assert body["code"] == "invalid_image"
    # A text model takes no images, whatever they are.
    body = _openai_error(gateway, data_url(picture("red")), model="tiny-random")
    assert body["code"] == "images_not_supported" and "vision profile" in body["message"]


def test_anthropic_errors_keep_their_shape(gateway: Gateway) -> None:
    client = claude(gateway)
    bad = {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "aGk="}}
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(model=VLM, max_tokens=2, messages=[{"role": "user", "content": [bad]}])
    assert exc.value.body["type"] == "error"
    assert "unsupported media_type image/bmp" in exc.value.body["error"]["message"]
    ok = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                      "data": base64.b64encode(picture("red")).decode()}}  # fmt: skip
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(
            model=VLM,
            max_tokens=2,
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": [ok]}],
        )
    assert "image blocks belong to user messages" in exc.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(
            model="tiny-random", max_tokens=2, messages=[{"role": "user", "content": [ok]}]
        )
    assert "does not accept images" in exc.value.body["error"]["message"]
