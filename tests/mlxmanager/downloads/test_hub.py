"""The real huggingface_hub client against the fake hub: search, model facts, errors."""

from __future__ import annotations

import pytest

from mlxmanager.downloads import hub, services
from mlxmanager.downloads.errors import HubAccessDenied, HubUnavailable
from mlxmanager.errors import DomainError, NotFound
from tests.conftest import free_port
from tests.mlxmanager.downloads.conftest import (
    BIN_ONLY,
    EMBED,
    GATED,
    KOKORO,
    QWEN,
    VISION,
    WHISPER,
    GiB,
)

# The hub reads the stored token from the database.
pytestmark = pytest.mark.django_db


def test_search_goes_to_the_configured_endpoint(fakehub) -> None:
    results = hub.list_models(search="qwen3", mlx_only=True, pipeline_tag=None, sort="downloads", limit=10)
    assert [m.repo_id for m in results] == [QWEN]
    assert fakehub.requests[0].path == "/api/models"
    m = results[0]
    assert m.mlx and m.downloads == 50_000 and m.likes == 120
    assert m.pipeline_tag == "text-generation" and m.kind_label == "Text"
    # 20k BF16 + 70k packed U32 elements
    assert m.weights_bytes == 20_000 * 2 + 70_000 * 4


def test_search_without_a_token_sends_no_authorization(fakehub) -> None:
    hub.list_models(search="", mlx_only=True, pipeline_tag=None, sort="downloads", limit=5)
    assert all(r.token is None for r in fakehub.requests)


def test_search_sends_the_configured_token(fakehub, settings) -> None:
    settings.MLXM_HF_TOKEN = "hf_secret_token"
    hub.list_models(search="", mlx_only=True, pipeline_tag=None, sort="downloads", limit=5)
    assert fakehub.requests[-1].token == "hf_secret_token"


def test_a_stored_token_wins_over_the_environment(fakehub, settings) -> None:
    settings.MLXM_HF_TOKEN = "hf_from_env"
    services.hub_token_set(token="hf_stored_token")
    assert hub.token_source() == "stored"
    hub.list_models(search="", mlx_only=True, pipeline_tag=None, sort="downloads", limit=5)
    assert fakehub.requests[-1].token == "hf_stored_token"
    services.hub_token_clear()
    assert hub.token_source() == "environment"
    hub.list_models(search="", mlx_only=True, pipeline_tag=None, sort="downloads", limit=5)
    assert fakehub.requests[-1].token == "hf_from_env"


def test_model_detail_of_a_text_model(fakehub) -> None:
    d = hub.model_detail(QWEN)
    assert d.repo_id == QWEN and d.sha == fakehub.repos[QWEN].sha and d.revision == "main"
    assert d.kind == "text" and d.kind_label == "Text"
    assert d.model_type == "qwen3" and d.architectures == ["Qwen3ForCausalLM"]
    assert d.quantization is not None and (d.quantization.bits, d.quantization.group_size) == (4, 64)
    assert d.dtype == "bfloat16" and d.context_length == 40960
    assert d.template.has_template and d.template.tools and d.template.thinking
    assert d.weights_bytes == 300_000  # the .safetensors only
    names = [f.name for f in d.download_files]
    assert "pytorch_model.bin" not in names and "model.safetensors" in names and "README.md" in names
    assert d.download_bytes == sum(f.size for f in d.download_files)
    assert d.fits_memory and d.memory_percent == 0
    assert d.mlx and d.has_weights
    assert d.url == f"{fakehub.url}/{QWEN}"
    sha256 = {f.name: f.sha256 for f in d.files}
    assert sha256["model.safetensors"] == fakehub.repos[QWEN].files["model.safetensors"].sha256
    assert sha256["config.json"] is None  # not an LFS file


def test_model_detail_reads_config_and_template_with_the_real_client(fakehub) -> None:
    hub.model_detail(QWEN)
    paths = [(r.method, r.path) for r in fakehub.requests]
    sha = fakehub.repos[QWEN].sha
    assert ("GET", f"/api/models/{QWEN}") in paths
    assert ("HEAD", f"/{QWEN}/resolve/{sha}/config.json") in paths
    assert ("GET", f"/{QWEN}/resolve/{sha}/tokenizer_config.json") in paths


@pytest.mark.parametrize(
    ("repo_id", "kind", "quant_bits"),
    [(EMBED, "embeddings", None), (VISION, "vision", 4), (WHISPER, "stt", None), (KOKORO, "tts", None)],
)
def test_model_detail_detects_the_type_from_the_config(
    repo_id: str, kind: str, quant_bits: int | None
) -> None:
    d = hub.model_detail(repo_id)
    assert d.kind == kind
    assert (d.quantization.bits if d.quantization else None) == quant_bits


def test_vision_template_from_chat_template_json() -> None:
    d = hub.model_detail(VISION)
    assert d.template.has_template and not d.template.tools and not d.template.thinking
    assert d.context_length == 128000


def test_memory_fit(settings) -> None:
    settings.MLXM_MEMORY_LIMIT_BYTES = 100_000
    d = hub.model_detail(QWEN)
    assert not d.fits_memory and d.memory_percent == 300
    d.memory_limit_bytes = 1 * GiB
    assert d.fits_memory


def test_a_repo_without_mlx_weights() -> None:
    d = hub.model_detail(BIN_ONLY)
    assert not d.has_weights and not d.fits_memory and not d.mlx


def test_a_specific_revision(fakehub) -> None:
    sha = fakehub.repos[QWEN].sha
    assert hub.model_detail(QWEN, revision=sha).sha == sha
    assert any(r.path == f"/api/models/{QWEN}/revision/{sha}" for r in fakehub.requests)


def test_unknown_repo_is_a_not_found() -> None:
    with pytest.raises(NotFound) as exc:
        hub.model_detail("nobody/nothing")
    assert exc.value.status == 404
    assert "was not found on the hub" in exc.value.message


def test_unknown_revision_is_a_not_found() -> None:
    with pytest.raises(NotFound) as exc:
        hub.model_detail(QWEN, revision="v9")
    assert "Revision 'v9'" in exc.value.message


@pytest.mark.parametrize("repo_id", ["", "a/b/c", "bad id/x", "x" * 200])
def test_invalid_repo_ids(repo_id: str) -> None:
    with pytest.raises(DomainError) as exc:
        hub.model_detail(repo_id)
    assert exc.value.param == "repo_id" and exc.value.status == 400


def test_a_server_error_is_hub_unavailable(fakehub) -> None:
    fakehub.inject(500, path_contains="/api/models")
    with pytest.raises(HubUnavailable) as exc:
        hub.model_detail(QWEN)
    assert exc.value.status == 502 and "HTTP 500" in exc.value.message


def test_model_detail_when_the_hub_is_down(fakehub) -> None:
    fakehub.stop()
    with pytest.raises(HubUnavailable) as exc:
        hub.model_detail(QWEN)
    assert exc.value.message.startswith(f"Cannot reach the hub at {fakehub.url}")


def test_search_when_the_hub_is_down_fails_at_once_saying_what_to_check(fakehub) -> None:
    # huggingface_hub itself retries a search for ~25 s; a connection probe answers first.
    fakehub.stop()
    with pytest.raises(HubUnavailable) as exc:
        hub.list_models(search="", mlx_only=True, pipeline_tag=None, sort="downloads", limit=5)
    message = exc.value.message
    assert message.startswith(f"Cannot reach the hub at {fakehub.url}: 127.0.0.1 refused the connection.")
    for what in ("MLXM_HF_ENDPOINT", "HTTPS_PROXY", "Hugging Face token"):
        assert what in message, what
    assert hub.wait_idle(0)  # no call left retrying in a thread: huggingface_hub was not asked


def test_an_unknown_host_is_named_without_a_raw_errno(settings) -> None:
    settings.MLXM_HF_ENDPOINT = "http://no-such-hub.invalid"
    with pytest.raises(HubUnavailable) as exc:
        hub.model_detail(QWEN)
    assert "the name no-such-hub.invalid could not be resolved" in exc.value.message
    assert "Errno" not in exc.value.message


def test_the_probe_goes_through_the_configured_proxy(fakehub, monkeypatch) -> None:
    closed = free_port()
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed}")
    with pytest.raises(HubUnavailable) as exc:
        hub.list_models(search="", mlx_only=True, pipeline_tag=None, sort="downloads", limit=5)
    assert "the proxy 127.0.0.1 refused the connection" in exc.value.message
    assert not fakehub.requests


def test_a_hub_that_hangs_is_cut_off(fakehub, settings) -> None:
    settings.MLXM_HF_TIMEOUT = 0.5
    fakehub.throttle = 10  # bytes per second: the answer never arrives in time
    with pytest.raises(HubUnavailable) as exc:
        hub.model_detail(QWEN)
    assert "did not answer within 0.5 s" in exc.value.message


def test_401_on_the_api_is_access_denied_without_leaking_the_token(fakehub, settings) -> None:
    settings.MLXM_HF_TOKEN = "hf_do_not_leak"
    fakehub.inject(
        401,
        path_contains="/resolve/",
        headers={"X-Error-Message": "Invalid credentials in Authorization header"},
    )
    with pytest.raises(HubAccessDenied) as exc:
        hub.model_detail(QWEN)
    assert "HTTP 401" in exc.value.message and "HF_TOKEN" in exc.value.message
    assert "hf_do_not_leak" not in exc.value.message


def test_gated_files_raise_a_gated_message(fakehub) -> None:
    with pytest.raises(HubAccessDenied) as exc:
        hub.model_detail(GATED)  # the config of a gated repo needs a token
    assert "gated" in exc.value.message and "HF_TOKEN" in exc.value.message


def test_gated_repo_with_an_accepted_token(fakehub, settings) -> None:
    settings.MLXM_HF_TOKEN = "hf_allowed"
    fakehub.tokens.add("hf_allowed")
    d = hub.model_detail(GATED)
    assert d.gated and d.kind == "text"


def test_hub_error_ignores_other_exceptions() -> None:
    assert hub.hub_error(ValueError("x"), repo_id=QWEN) is None
