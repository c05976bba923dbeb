"""End to end: `/v1/audio/transcriptions`, `/translations` and `/speech` through the official
`openai` SDK against the live gateway, served by the tiny random Whisper (real tokenizer)
and the tiny random Soprano in the worker pool."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from tests.conftest import Gateway

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

STT = "tiny-whisper"
TTS = "tiny-tts"


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def encoded(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt)
    return out.getvalue()


def auth(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.key}"}


# ---- speech to text -------------------------------------------------------------------


def test_transcription_json_and_verbose_json_with_timestamps(gateway: Gateway) -> None:
    client = gateway.openai()
    wav = encoded(tone(3.0), 16000, "WAV")
    plain = client.audio.transcriptions.create(model=STT, file=("tone.wav", wav), language="en")
    assert isinstance(plain.text, str)
    verbose = client.audio.transcriptions.create(
        model=STT,
        file=("tone.wav", wav),
        language="en",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert verbose.language == "english"
    assert verbose.duration == pytest.approx(3.0, abs=0.01)
    assert verbose.text == plain.text  # greedy decoding: the same audio, the same words
    assert verbose.segments, "Whisper always returns at least one timed segment"
    for seg in verbose.segments:
        assert 0.0 <= seg.start <= seg.end <= 3.0  # clamped to the audio
    assert isinstance(verbose.words, list)
    for word in verbose.words:
        assert 0.0 <= word.start <= word.end


def test_text_srt_and_vtt_formats(gateway: Gateway) -> None:
    client = gateway.openai()
    wav = encoded(tone(2.0), 16000, "WAV")
    text = client.audio.transcriptions.create(model=STT, file=("a.wav", wav), response_format="text")
    assert isinstance(text, str)
    srt = client.audio.transcriptions.create(model=STT, file=("a.wav", wav), response_format="srt")
    assert isinstance(srt, str) and "-->" in srt and srt.startswith("1\n00:00:")
    vtt = client.audio.transcriptions.create(model=STT, file=("a.wav", wav), response_format="vtt")
    assert isinstance(vtt, str) and vtt.startswith("WEBVTT") and "-->" in vtt
    first_cue = vtt.split("\n")[2]
    assert first_cue.count(".") == 2 and "," not in first_cue  # WebVTT uses '.' before milliseconds


def test_uploads_are_decoded_mixed_and_resampled(gateway: Gateway) -> None:
    """FLAC and MP3 at 44.1 kHz stereo come out as the same duration of 16 kHz mono."""
    client = gateway.openai()
    for fmt, name in (("FLAC", "a.flac"), ("MP3", "a.mp3"), ("OGG", "a.ogg")):
        data = encoded(tone(2.5, rate=44100, channels=2), 44100, fmt)
        r = client.audio.transcriptions.create(
            model=STT, file=(name, data), response_format="verbose_json", language="en"
        )
        assert r.duration == pytest.approx(2.5, abs=0.06), (fmt, r.duration)


def test_translation_to_english(gateway: Gateway) -> None:
    r = gateway.openai().audio.translations.create(
        model=STT, file=("a.wav", encoded(tone(1.5), 16000, "WAV")), response_format="verbose_json"
    )
    assert r.duration == pytest.approx(1.5, abs=0.01)


def test_transcription_errors_are_clear(gateway: Gateway) -> None:
    client = gateway.openai()
    wav = encoded(tone(1.0), 16000, "WAV")
    cases = [
        ({"file": ("x.wav", b"this is not audio")}, "file", "could not be decoded"),
        ({"file": ("x.wav", b"")}, "file", "empty"),
        ({"file": ("x.wav", wav), "response_format": "docx"}, "response_format", "verbose_json"),
        ({"file": ("x.wav", wav), "temperature": 3}, "temperature", "between 0 and 1"),
        (
            {"file": ("x.wav", wav), "timestamp_granularities": ["word"]},
            "timestamp_granularities",
            "verbose_json",
        ),
        ({"file": ("x.wav", wav), "language": "english!"}, "language", "ISO-639-1"),
    ]
    for kwargs, param, words in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            client.audio.transcriptions.create(model=STT, **kwargs)  # type: ignore[arg-type]
        assert exc.value.body["param"] == param, (kwargs, exc.value.body)
        assert words in exc.value.body["message"], exc.value.body
    # A chat model is not a speech model; the message names the right endpoint.
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.transcriptions.create(model="tiny-random", file=("x.wav", wav))
    assert (
        exc.value.body["code"] == "wrong_model_type" and "/v1/chat/completions" in exc.value.body["message"]
    )
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=STT, messages=[{"role": "user", "content": "hi"}])
    assert (
        "speech-to-text" in exc.value.body["message"]
        and "/v1/audio/transcriptions" in exc.value.body["message"]
    )
    # Longer than the gateway allows (600 s): refused before the worker sees it.
    long_flac = encoded(np.zeros(8000 * 601, dtype=np.float32), 8000, "FLAC")
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.transcriptions.create(model=STT, file=("long.flac", long_flac))
    assert "600 s" in exc.value.body["message"]
    # Not multipart at all.
    r = httpx.post(
        gateway.v1 + "/audio/transcriptions", json={"model": STT}, headers=auth(gateway), timeout=30
    )
    assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]


def test_an_oversized_upload_is_413(gateway: Gateway) -> None:
    big = b"RIFF" + b"\0" * (26 * 1024 * 1024)
    r = httpx.post(
        gateway.v1 + "/audio/transcriptions",
        files={"file": ("big.wav", big)},
        data={"model": STT},
        headers=auth(gateway),
        timeout=60,
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"


# ---- text to speech -------------------------------------------------------------------

# The tiny Soprano makes its profile's max_tokens (8) tokens of 64 ms per sentence.
SENTENCE_SECONDS = 8 * 0.064


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_speech_files_decode_to_the_expected_length(gateway: Gateway, fmt: str) -> None:
    r = gateway.openai().audio.speech.create(
        model=TTS, voice="alloy", input="Hello there. This is a test!", response_format=fmt
    )
    audio, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    assert rate in (32000, 24000)
    seconds = len(audio) / rate
    # mp3 frames pad the end a little.
    assert seconds == pytest.approx(2 * SENTENCE_SECONDS, abs=0.08), (fmt, seconds)
    assert np.abs(audio).max() > 0.01  # audible, not silence


def test_pcm_is_24khz_16bit_and_streams(gateway: Gateway) -> None:
    client = gateway.openai()
    chunks: list[bytes] = []
    with client.audio.speech.with_streaming_response.create(
        model=TTS, voice="alloy", input="One. Two. Three.", response_format="pcm"
    ) as response:
        assert response.headers["content-type"].startswith("audio/pcm")
        for chunk in response.iter_bytes():
            chunks.append(chunk)
    pcm = b"".join(chunks)
    samples = np.frombuffer(pcm, dtype="<i2")
    assert len(samples) / 24000 == pytest.approx(3 * SENTENCE_SECONDS, abs=0.01)


def test_speech_as_server_sent_events(gateway: Gateway) -> None:
    body = {
        "model": TTS,
        "input": "First part. Second part.",
        "response_format": "pcm",
        "stream_format": "sse",
    }
    events = []
    with httpx.stream(
        "POST", gateway.v1 + "/audio/speech", json=body, headers=auth(gateway), timeout=60
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) == 2  # one per sentence, as each is made
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(pcm) / 2 / 24000 == pytest.approx(2 * SENTENCE_SECONDS, abs=0.01)
    done = events[-1]
    assert done["type"] == "speech.audio.done" and done["usage"]["input_tokens"] > 0


def test_speech_errors_are_clear(gateway: Gateway) -> None:
    client = gateway.openai()
    cases = [
        ({"input": "hi", "response_format": "opus"}, "response_format"),
        ({"input": "hi", "speed": 9.0}, "speed"),
        ({"input": ""}, "input"),
        ({"input": "x" * 4097}, "input"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            client.audio.speech.create(model=TTS, voice="alloy", **kwargs)  # type: ignore[arg-type]
        assert exc.value.body["param"] == param, (kwargs, exc.value.body)
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.speech.create(model=STT, voice="alloy", input="hi")
    assert (
        exc.value.body["code"] == "wrong_model_type"
        and "/v1/audio/transcriptions" in exc.value.body["message"]
    )
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=TTS, input="hi")
    assert "text-to-speech" in exc.value.body["message"]
