"""Images and audio at the gateway's edge (inference/media.py): checks, decoding, encoding."""

from __future__ import annotations

import asyncio
import base64
import io
import struct

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
