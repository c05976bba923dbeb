"""The speech engines on the tiny Soprano and Whisper, in process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference import protocol as p
from inference.worker.adapters.llm import BadRequest
from inference.worker.adapters.speech import STTEngine, TTSEngine, language_name, sentences
from inference.worker.testmodels.media import TINY_TTS_NAME, TINY_WHISPER_NAME


def test_sentences_split_at_ends_and_cut_long_ones() -> None:
    assert sentences("Hi there. How are you?\nFine!  ") == ["Hi there.", "How are you?", "Fine!"]
    long = " ".join(["word"] * 200)
    pieces = sentences(long)
    assert len(pieces) == 3 and all(len(x) <= 400 for x in pieces) and " ".join(pieces) == long
    assert sentences("   \n ") == []


def test_language_names_follow_openai() -> None:
    assert language_name("en") == "english" and language_name("de") == "german"
    assert language_name("xx") == "xx"


@pytest.mark.slow
def test_speech_streams_one_chunk_per_sentence(demo_models: dict[str, Path]) -> None:
    spec = p.ModelSpec(name="tts", path=str(demo_models[TINY_TTS_NAME]), kind="tts")
    engine = TTSEngine(spec)
    engine.add(p.Speak(request_id="s", model=spec, text="One. Two. Three.", max_tokens=4), conn="c")
    engine.add(p.Speak(request_id="t", model=spec, text="Other.", max_tokens=4), conn="d")
    assert engine.owned_by("c") == ["s"] and engine.active == 2
    chunks: dict[str, list[p.AudioChunk]] = {"s": [], "t": []}
    while engine.active:
        for _, item in engine.step():
            chunks[item.request_id].append(item)
    assert [c.final for c in chunks["s"]] == [False, False, False, True]
    assert [c.final for c in chunks["t"]] == [False, True]
    audio = np.frombuffer(b"".join(c.samples for c in chunks["s"]), dtype="<f4")
    assert len(audio) == 3 * 4 * 2048 and np.isfinite(audio).all()  # 4 tokens of 64 ms at 32 kHz each
    assert chunks["s"][-1].input_tokens > 0
    engine.add(p.Speak(request_id="u", model=spec, text="Gone. Soon."), conn="c")
    assert engine.abort("u") and engine.active == 0
    with pytest.raises(BadRequest, match="nothing to say"):
        engine.add(p.Speak(request_id="v", model=spec, text=" \n "), conn="c")


@pytest.mark.slow
def test_transcription_gives_timed_segments(demo_models: dict[str, Path]) -> None:
    spec = p.ModelSpec(name="stt", path=str(demo_models[TINY_WHISPER_NAME]), kind="stt")
    engine = STTEngine(spec)
    t = np.arange(16000 * 2) / 16000
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()
    reply = engine.transcribe(
        p.Transcribe(
            request_id="r", model=spec, audio=pcm, language="en", word_timestamps=True, max_tokens=12
        )
    )
    assert reply.duration == pytest.approx(2.0) and reply.language == "english"
    assert reply.segments and all(0 <= s.start <= s.end <= 2.0 for s in reply.segments)
    assert all(
        np.isfinite([s.avg_logprob, s.compression_ratio, s.no_speech_prob]).all() for s in reply.segments
    )
    with pytest.raises(BadRequest, match="no samples"):
        engine.transcribe(p.Transcribe(request_id="e", model=spec, audio=b""))
