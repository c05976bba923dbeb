"""Reading what a model is from its config, file layout and chat template."""

from __future__ import annotations

import pytest

from mlxmanager.downloads import analysis
from mlxmanager.downloads.analysis import EMBEDDINGS, STT, TEXT, TTS, UNKNOWN, VISION


@pytest.mark.parametrize(
    ("config", "files", "pipeline_tag", "expected"),
    [
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, [], None, TEXT),
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, [], None, TEXT),
        # The name says nothing; the config decides.
        (
            {"model_type": "qwen2_5_vl", "architectures": ["X"], "vision_config": {}},
            [],
            "text-generation",
            VISION,
        ),
        ({"model_type": "llava", "image_token_index": 32000}, [], None, VISION),
        ({"model_type": "bert", "architectures": ["BertModel"]}, [], None, EMBEDDINGS),
        ({"model_type": "xlm-roberta"}, [], None, EMBEDDINGS),
        # Qwen3-Embedding: a causal LM architecture, but sentence-transformers pooling files.
        (
            {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]},
            ["1_Pooling/config.json"],
            None,
            EMBEDDINGS,
        ),
        ({"n_mels": 80, "n_audio_ctx": 1500}, [], None, STT),
        ({"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]}, [], None, STT),
        ({"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"]}, [], None, STT),
        ({"model_type": "kokoro", "istftnet": {}}, [], None, TTS),
        ({"architectures": ["SpeechT5ForTextToSpeech"]}, [], None, TTS),
        # A TTS model on a plain LLM architecture: only the hub's tag can tell.
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, [], "text-to-speech", TTS),
        ({}, [], None, UNKNOWN),
        ({}, [], "feature-extraction", EMBEDDINGS),
    ],
)
def test_detect_type(config: dict, files: list[str], pipeline_tag: str | None, expected: str) -> None:
    assert analysis.detect_type(config, files=files, pipeline_tag=pipeline_tag) == expected


def test_quantization_from_mlx_config() -> None:
    q = analysis.quantization({"quantization": {"group_size": 64, "bits": 4}})
    assert q == analysis.Quantization(bits=4, group_size=64, mode=None)
    assert q.label == "4-bit, group size 64"
    mx = analysis.quantization({"quantization_config": {"bits": 4, "group_size": 32, "mode": "mxfp4"}})
    assert mx is not None and mx.label == "4-bit mxfp4, group size 32"


@pytest.mark.parametrize("config", [{}, {"quantization": None}, {"quantization": {"group_size": 64}}])
def test_no_quantization(config: dict) -> None:
    assert analysis.quantization(config) is None


def test_dtype_falls_back_to_text_config() -> None:
    assert analysis.dtype({"torch_dtype": "bfloat16"}) == "bfloat16"
    assert analysis.dtype({"text_config": {"dtype": "float16"}}) == "float16"
    assert analysis.dtype({}) is None


@pytest.mark.parametrize(
    ("template", "tools", "thinking"),
    [
        ("{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}", True, False),
        ("{%- for m in messages %}{% if m.tool_calls %}x{% endif %}{% endfor %}", True, False),
        ("{{ '<think>' }}{% for m in messages %}{% endfor %}", False, True),
        ("{% if enable_thinking %}x{% endif %}", False, True),
        ("You can use tools when asked. {{ messages }}", False, False),  # text, not a variable
        ("{{ messages }}", False, False),
    ],
)
def test_template_features(template: str, tools: bool, thinking: bool) -> None:
    features = analysis.template_features(template)
    assert features == analysis.TemplateFeatures(has_template=True, tools=tools, thinking=thinking)


def test_no_template() -> None:
    assert not analysis.template_features(None).has_template


def test_chat_template_from_tokenizer_config() -> None:
    assert analysis.chat_template_from({"chat_template": "T"}) == "T"
    named = [{"name": "tool_use", "template": "A"}, {"name": "default", "template": "B"}]
    assert analysis.chat_template_from({"chat_template": named}) == "B"
    assert analysis.chat_template_from({"chat_template": [{"name": "rag", "template": "C"}]}) == "C"
    assert analysis.chat_template_from({}) is None
    assert analysis.chat_template_from(None) is None


def test_bytes_from_parameters() -> None:
    # MLX 4-bit: U32 packs eight weights; the count is of packed elements.
    assert analysis.bytes_from_parameters({"BF16": 1000, "U32": 500}) == 2000 + 2000
    assert analysis.bytes_from_parameters({"F32": 10}) == 40
    assert analysis.bytes_from_parameters({"WEIRD": 10}) is None
    assert analysis.bytes_from_parameters(None) is None


@pytest.mark.parametrize(
    ("name", "wanted", "weights"),
    [
        ("model.safetensors", True, True),
        ("model-00001-of-00002.safetensors", True, True),
        ("weights.npz", True, True),
        ("config.json", True, False),
        ("1_Pooling/config.json", True, False),
        ("tokenizer.model", True, False),
        ("chat_template.jinja", True, False),
        ("pytorch_model.bin", False, False),
        ("model.gguf", False, False),
        ("onnx/model.onnx", False, False),
        ("original/consolidated.00.pth", False, False),
        (".gitattributes", False, False),
    ],
)
def test_file_selection(name: str, wanted: bool, weights: bool) -> None:
    assert analysis.wanted_file(name) is wanted
    assert analysis.is_weight_file(name) is weights


def test_pipeline_label() -> None:
    assert analysis.pipeline_label("text-generation") == "Text"
    assert analysis.pipeline_label("sentence-similarity") == "Embeddings"
    assert analysis.pipeline_label("image-to-image") == "image-to-image"
    assert analysis.pipeline_label(None) == ""


@pytest.mark.parametrize(
    ("repo_id", "tags", "parameters", "expected"),
    [
        ("mlx-community/Qwen3-0.6B-4bit", [], None, "4bit"),
        ("mlx-community/Llama-3.2-1B-Instruct-8-bit", [], None, "8bit"),
        ("mlx-community/gpt-oss-20b-MXFP4-Q8", [], None, "mxfp4"),
        ("acme/model", ["mlx", "3bit"], None, "3bit"),
        ("mlx-community/Kokoro-82M-bf16", [], None, "bf16"),
        ("acme/plain", [], {"F32": 10}, "fp32"),
        ("acme/mixed", [], {"BF16": 10, "U32": 40}, None),  # quantized, bits unknown
        ("acme/a4bitty-model", [], None, None),  # "4bit" inside a word is not a marker
    ],
)
def test_search_quantization(
    repo_id: str, tags: list[str], parameters: dict | None, expected: str | None
) -> None:
    assert analysis.search_quantization(repo_id, tags, parameters) == expected
