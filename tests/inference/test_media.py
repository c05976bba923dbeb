"""Images and audio at the gateway's edge (inference/media.py): checks, decoding, encoding."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from django.test import override_settings
from PIL import Image

from inference import media
from inference import protocol as p
from mlxmanager.errors import DomainError


def png(size: tuple[int, int] = (20, 10), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "red").save(out, fmt)
    return out.getvalue()


def noisy() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_check_image_accepts_the_served_formats() -> None:
    for fmt in ("PNG", "JPEG", "GIF", "WEBP"):
        raw = png(fmt=fmt)
        assert media.check_image(raw, "p") is raw


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "empty"),
        (b"hello", "could not be read"),
        (noisy()[:400], "could not be decoded"),
        (png(fmt="BMP"), "unsupported image format BMP"),
    ],
)
def test_check_image_refuses_what_it_cannot_serve(raw: bytes, words: str) -> None:
    with pytest.raises(DomainError) as exc:
        media.check_image(raw, "messages[0].content[0].image_url")
    assert words in exc.value.message
    assert exc.value.param == "messages[0].content[0].image_url" and exc.value.code == "invalid_image"


@override_settings(MLXM_IMAGE_MAX_PIXELS=100, MLXM_IMAGE_MAX_BYTES=10_000)
def test_pixel_and_byte_limits() -> None:
    with pytest.raises(DomainError, match="20x10 pixels"):
        media.check_image(png((20, 10)), "p")
    with pytest.raises(DomainError, match="MB allowed"):
        media.check_image(b"\0" * 10_001, "p")


def test_data_urls_and_base64_sources() -> None:
    raw = png()
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    assert asyncio.run(media.load_image(media.ImageSource(param="p", url=url))) == raw
    data = base64.b64encode(raw).decode()
    assert (
        asyncio.run(media.load_image(media.ImageSource(param="p", data=data, media_type="image/png"))) == raw
    )
    with pytest.raises(DomainError, match="media_type image/svg"):
        asyncio.run(media.load_image(media.ImageSource(param="p", data=data, media_type="image/svg+xml")))
    with pytest.raises(DomainError, match="data:image/png;base64"):
        asyncio.run(media.load_image(media.ImageSource(param="p", url="data:image/png,rawbytes")))


@override_settings(MLXM_IMAGE_FETCH_PRIVATE=False)
def test_internal_addresses_are_not_fetched_by_default() -> None:
    for url in ("http://127.0.0.1:9/cat.png", "http://localhost/cat.png", "http://10.1.2.3/cat.png",
                "http://169.254.169.254/latest/meta-data"):  # fmt: skip
        with pytest.raises(DomainError, match="internal address"):
            asyncio.run(media.load_image(media.ImageSource(param="p", url=url)))


# IPv6 forms that carry an internal IPv4 address: each one reaches it through a translator
# or tunnel, and Python 3.11 calls most of them global.
EMBEDDED_INTERNAL = [
    "::7f00:1",  # IPv4-compatible ::127.0.0.1
    "::a9fe:a9fe",  # IPv4-compatible ::169.254.169.254
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:a00:1",  # IPv4-mapped 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 (RFC 6052) 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 10.0.0.1
    "64:ff9b:1::a9fe:a9fe",  # NAT64 local-use prefix (RFC 8215)
    "2002:7f00:1::",  # 6to4 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
]


def _stub_getaddrinfo(answers: dict[str, list[list[str]]], calls: list[str]) -> Any:
    """A getaddrinfo whose answers for the hosts in `answers` come from there, one list per
    call (the last one repeats): a DNS server that changes its mind. Other hosts resolve."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, *args, **kw)
        calls.append(name)
        ips = answers[name][min(len(calls) - 1, len(answers[name]) - 1)]
        port = int(port or 0)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
            if ":" in ip
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in ips
        ]

    return getaddrinfo


@pytest.mark.parametrize("address", EMBEDDED_INTERNAL)
@override_settings(MLXM_IMAGE_FETCH_PRIVATE=False)
def test_internal_ipv4_inside_ipv6_is_not_fetched(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", _stub_getaddrinfo({"sneaky.test": [[address]]}, calls))
    for url in (f"http://[{address}]/cat.png", "http://sneaky.test/cat.png"):
        with pytest.raises(DomainError, match="internal address"):
            asyncio.run(media.load_image(media.ImageSource(param="p", url=url)))


def test_embedded_public_ipv4_is_not_internal() -> None:
    for address in ("2606:4700::1111", "8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"):
        assert not media.internal_address(ipaddress.ip_address(address)), address
    for address in EMBEDDED_INTERNAL + ["127.0.0.1", "::1", "fe80::1", "fc00::1", "100.64.0.1", "224.0.0.1"]:
        assert media.internal_address(ipaddress.ip_address(address)), address


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append({"path": self.path, "host": self.headers.get("host", "")})
        body = png()
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Handler", (_ImageHandler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("private", [False, True], ids=["checked", "unchecked"])
def test_the_fetch_connects_to_the_address_it_resolved(
    private: bool, image_server: tuple[int, list[dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolved once: the connection goes to that address (with the URL's Host header), even
    when a second lookup would answer something else (192.0.2.1: TEST-NET, unreachable)."""
    port, seen = image_server
    calls: list[str] = []
    monkeypatch.setattr(
        socket, "getaddrinfo", _stub_getaddrinfo({"images.test": [["127.0.0.1"], ["192.0.2.1"]]}, calls)
    )
    monkeypatch.setattr(media, "internal_address", lambda a: False, raising=False)  # 127.0.0.1 passes
    url = f"http://images.test:{port}/cat.png"
    with override_settings(MLXM_IMAGE_FETCH_PRIVATE=private, MLXM_IMAGE_FETCH_TIMEOUT=3):
        assert asyncio.run(media.load_image(media.ImageSource(param="p", url=url))) == png()
    assert seen == [{"path": "/cat.png", "host": f"images.test:{port}"}]
    assert calls == ["images.test"]  # one lookup


@override_settings(MLXM_IMAGE_FETCH_PRIVATE=False, MLXM_IMAGE_FETCH_TIMEOUT=1)
def test_dns_rebinding_cannot_reach_an_internal_address(
    image_server: tuple[int, list[dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check sees a public address, a second lookup would give 127.0.0.1: the fetch goes
    to the public address it checked (unreachable here), never to the local server."""
    port, seen = image_server
    calls: list[str] = []
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        _stub_getaddrinfo({"rebind.test": [["203.0.113.7", "1.1.1.1"], ["127.0.0.1"]]}, calls),
    )
    monkeypatch.setattr(media, "internal_address", lambda a: str(a) == "127.0.0.1")  # TEST-NET counts
    with pytest.raises(DomainError, match="could not be fetched|took longer"):
        asyncio.run(media.load_image(media.ImageSource(param="p", url=f"http://rebind.test:{port}/cat.png")))
    assert seen == []


def test_a_pinned_https_request_keeps_the_name_for_host_and_tls() -> None:
    import httpx

    req = media.pinned_request(
        httpx.AsyncClient(), httpx.URL("https://images.test:8443/a.png?x=1"), "2606:4700::1111"
    )
    assert str(req.url) == "https://[2606:4700::1111]:8443/a.png?x=1"
    assert req.headers["host"] == "images.test:8443"
    assert req.extensions["sni_hostname"] == "images.test"  # certificate checked for the name


def test_a_text_model_takes_no_images_and_the_count_is_capped() -> None:
    sources = [media.ImageSource(param=f"m[{i}]", url="data:,") for i in range(3)]
    with pytest.raises(DomainError) as exc:
        asyncio.run(media.load_images(sources, model="chat", vision=False))
    assert exc.value.code == "images_not_supported" and exc.value.param == "m[0]"
    with override_settings(MLXM_MAX_IMAGES=2), pytest.raises(DomainError) as exc:
        asyncio.run(media.load_images(sources, model="vlm", vision=True))
    assert exc.value.code == "too_many_images" and exc.value.param == "m[2]"


def _encoded(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt)
    return out.getvalue()


def test_decode_audio_mixes_and_resamples_to_16k() -> None:
    t = np.arange(44100) / 44100
    stereo = (
        np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 300 * t)], axis=1).astype(np.float32) * 0.5
    )
    pcm, seconds = media.decode_audio(_encoded(stereo, 44100, "FLAC"))
    samples = np.frombuffer(pcm, dtype="<i2")
    assert seconds == pytest.approx(1.0, abs=1e-3)
    assert len(samples) == p.AUDIO_SAMPLE_RATE
    assert 0.45 < np.abs(samples).max() / 32767 < 0.55  # the tone kept its level


@override_settings(MLXM_AUDIO_MAX_SECONDS=1.0)
def test_decode_audio_refuses_long_or_unreadable_audio() -> None:
    with pytest.raises(DomainError, match="more than the 1 s allowed"):
        media.decode_audio(_encoded(np.zeros(16000 * 2, dtype=np.float32), 16000, "WAV"))
    with pytest.raises(DomainError, match="could not be decoded"):
        media.decode_audio(b"RIFF....WAVEfmt garbage")


def test_speech_encoder_streams_wav_and_pcm_and_finishes_flac() -> None:
    tone = (0.3 * np.sin(np.arange(3200) / 5)).astype(np.float32)
    wav = media.SpeechEncoder("wav")
    first, second = wav.add(tone, 32000), wav.add(tone, 32000)
    assert first[:4] == b"RIFF" and struct.unpack("<I", first[40:44])[0] == 0xFFFFFFFF
    assert len(first) == 44 + 2 * len(tone) and len(second) == 2 * len(tone) and wav.finish() == b""
    pcm = media.SpeechEncoder("pcm").add(tone, 32000)
    assert len(pcm) == 2 * len(tone) * 24000 // 32000  # OpenAI's pcm: 24 kHz
    flac = media.SpeechEncoder("flac")
    assert flac.add(tone, 32000) == b""
    audio, rate = sf.read(io.BytesIO(flac.finish()))
    assert rate == 32000 and len(audio) == len(tone)
    whole = media.encode_speech([(tone, 32000), (tone, 32000)], "wav")
    audio, rate = sf.read(io.BytesIO(whole))
    assert struct.unpack("<I", whole[40:44])[0] == 4 * len(tone) and len(audio) == 2 * len(tone)
