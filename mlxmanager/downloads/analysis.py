"""What a model repo is, read from its files: type, architecture, quantization, template features.

Pure functions over already-fetched JSON and text, so they are cheap to test and reuse
(the Local models list reads the same facts from disk).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Model types the product knows how to serve (issue 5 "type").
TEXT = "text"
VISION = "vision"
EMBEDDINGS = "embeddings"
TTS = "tts"
STT = "stt"
UNKNOWN = "unknown"

TYPE_LABELS = {
    TEXT: "Text",
    VISION: "Vision",
    EMBEDDINGS: "Embeddings",
    TTS: "Text to speech",
    STT: "Speech to text",
    UNKNOWN: "Unknown",
}

# Where a profile of each type answers.
TYPE_ENDPOINTS = {
    TEXT: "/v1/chat/completions",
    VISION: "/v1/chat/completions (with images)",
    EMBEDDINGS: "/v1/embeddings",
    TTS: "/v1/audio/speech",
    STT: "/v1/audio/transcriptions",
}

# Hub pipeline tags for each type, used by the search filter.
PIPELINE_TAGS = {
    TEXT: "text-generation",
    VISION: "image-text-to-text",
    EMBEDDINGS: "feature-extraction",
    TTS: "text-to-speech",
    STT: "automatic-speech-recognition",
}
_TYPE_BY_PIPELINE = {tag: kind for kind, tag in PIPELINE_TAGS.items()} | {"sentence-similarity": EMBEDDINGS}

_TTS_MODEL_TYPES = {
    "kokoro", "csm", "sesame", "dia", "outetts", "spark", "bark", "speecht5", "vits",
    "parler_tts", "marvis", "chatterbox", "kitten", "vibevoice", "fastspeech2_conformer",
    # mlx-audio's own TTS architectures (mlx_audio/tts/models)
    "soprano", "pocket_tts", "qwen3_tts", "melotts", "voxcpm", "voxcpm2", "indextts", "zonos2",
    "chatterbox_turbo", "kitten_tts", "echo_tts", "higgs_audio", "voxtral_tts", "moss_tts", "omnivoice",
}  # fmt: skip
_TTS_KEYS = {"istftnet", "vocoder_config", "codec_config", "acoustic_tokenizer_config", "vocoder"}
_STT_MODEL_TYPES = {
    "whisper", "parakeet", "wav2vec2", "hubert", "moonshine", "speech_to_text", "canary",
    "wavlm", "data2vec-audio", "granite_speech", "lasr",
    # mlx-audio's own STT architectures (mlx_audio/stt/models)
    "sensevoice", "qwen3_asr", "fireredasr2", "nemotron_asr", "cohere_asr", "glmasr", "mms",
}  # fmt: skip
_STT_KEYS = {"num_mel_bins", "n_mels", "n_audio_ctx"}
_VISION_KEYS = {"vision_config", "vision_tower_config", "mm_vision_tower", "image_token_index", "visual"}
_ENCODER_MODEL_TYPES = {
    "bert", "roberta", "xlm-roberta", "nomic_bert", "modernbert", "distilbert", "mpnet",
    "electra", "deberta-v2", "jina_bert",
}  # fmt: skip
# sentence-transformers writes these next to the weights of an embedding model.
_EMBEDDING_FILES = {"modules.json", "sentence_bert_config.json", "1_Pooling/config.json"}
_GENERATIVE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")

# Weight files MLX loads. Everything else a repo holds for other frameworks is skipped.
WEIGHT_PATTERNS = ("*.safetensors", "*.npz")
SKIP_PATTERNS = (
    "*.bin", "*.pth", "*.pt", "*.ckpt", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.ot",
    "*.gguf", "*.mlmodel", "*.tflite", "onnx/*", "openvino/*", "coreml/*", "original/*",
    ".gitattributes",
)  # fmt: skip

# Bytes per element for the dtypes the hub reports in `safetensors.parameters`.
_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "BF16": 2, "F16": 2,
    "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip

_THINKING_MARKERS = ("<think>", "enable_thinking", "reasoning_content", "<|channel|>")
# `tools` used as a variable inside a Jinja tag, e.g. `{% if tools %}` or `{{ tools | tojson }}`.
_TOOLS_RE = re.compile(r"\{[%{][^%}]*\b(tools|tool_calls)\b")


@dataclass(frozen=True)
class Quantization:
    bits: int
    group_size: int | None
    mode: str | None

    @property
    def label(self) -> str:
        mode = f" {self.mode}" if self.mode and self.mode != "affine" else ""
        group = f", group size {self.group_size}" if self.group_size else ""
        return f"{self.bits}-bit{mode}{group}"


@dataclass(frozen=True)
class TemplateFeatures:
    has_template: bool
    tools: bool
    thinking: bool


# Quantization filter choices for search: the hub's model list carries names, tags and
# safetensors dtypes, not config.json, so search reads those (the model page reads the config).
QUANT_FILTERS = {
    "2bit": "2-bit",
    "3bit": "3-bit",
    "4bit": "4-bit",
    "5bit": "5-bit",
    "6bit": "6-bit",
    "8bit": "8-bit",
    "mxfp4": "MXFP4",
    "bf16": "bfloat16 (not quantized)",
    "fp16": "float16 (not quantized)",
    "fp32": "float32 (not quantized)",
}
_QUANT_NAME = re.compile(r"(?<![a-z0-9])(?:(\d)-?bits?|(mxfp4|nvfp4|bf16|fp16|fp32|f16|f32))(?![a-z0-9])")
_DTYPE_ONLY = {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}


def search_quantization(repo_id: str, tags: list[str], parameters: Mapping[str, int] | None) -> str | None:
    """A QUANT_FILTERS key read from the repo name and tags, else from the weights' dtypes."""
    for text in [repo_id.rsplit("/", 1)[-1].lower(), *(t.lower() for t in tags)]:
        match = _QUANT_NAME.search(text)
        if match:
            found = match.group(1) and f"{match.group(1)}bit" or match.group(2)
            return {"f16": "fp16", "f32": "fp32", "nvfp4": "mxfp4"}.get(found, found)
    dtypes = {k for k, v in (parameters or {}).items() if v}
    if len(dtypes) == 1 and next(iter(dtypes)) in _DTYPE_ONLY:
        return _DTYPE_ONLY[next(iter(dtypes))]
    return None


def is_weight_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in WEIGHT_PATTERNS)


def wanted_file(name: str) -> bool:
    """Whether a download fetches `name`: all of a repo but other frameworks' weights."""
    return not any(fnmatch.fnmatch(name, p) for p in SKIP_PATTERNS)


def quantization(config: Mapping[str, Any]) -> Quantization | None:
    """MLX writes `quantization: {bits, group_size[, mode]}` into config.json."""
    for key in ("quantization", "quantization_config"):
        q = config.get(key)
        if isinstance(q, Mapping) and isinstance(q.get("bits"), int):
            group = q.get("group_size")
            mode = q.get("mode")
            return Quantization(
                bits=q["bits"],
                group_size=group if isinstance(group, int) else None,
                mode=mode if isinstance(mode, str) else None,
            )
    return None


def dtype(config: Mapping[str, Any]) -> str | None:
    value = config.get("torch_dtype") or config.get("dtype")
    if isinstance(value, str):
        return value
    text = config.get("text_config")
    if isinstance(text, Mapping):
        value = text.get("torch_dtype") or text.get("dtype")
    return value if isinstance(value, str) else None


def architecture(config: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    model_type = config.get("model_type")
    archs = config.get("architectures")
    return (
        model_type if isinstance(model_type, str) else None,
        [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else [],
    )


def detect_type(
    config: Mapping[str, Any], *, files: Iterable[str] = (), pipeline_tag: str | None = None
) -> str:
    """text / vision / embeddings / tts / stt, from the config and the repo's file layout.

    The hub's pipeline tag only breaks a tie: a TTS model built on a plain LLM
    architecture (e.g. Orpheus on Llama) has a config indistinguishable from a chat model.
    """
    model_type, archs = architecture(config)
    keys = set(config)
    mt = (model_type or "").lower()
    files = set(files)

    if (
        mt in _TTS_MODEL_TYPES
        or keys & _TTS_KEYS
        or any(a.endswith(("ForTextToSpeech", "ForTextToWaveform")) for a in archs)
    ):
        return TTS
    if (
        mt in _STT_MODEL_TYPES
        or keys & _STT_KEYS
        or any(a.endswith(("ForCTC", "ForSpeechSeq2Seq")) for a in archs)
    ):
        return STT
    if keys & _VISION_KEYS or "image_token_id" in keys:
        return VISION
    generative = any(a.endswith(_GENERATIVE_SUFFIXES) for a in archs)
    if files & _EMBEDDING_FILES:
        return EMBEDDINGS
    if not generative and (
        mt in _ENCODER_MODEL_TYPES or (archs and all(a.endswith(("Model", "ForMaskedLM")) for a in archs))
    ):
        return EMBEDDINGS
    hinted = _TYPE_BY_PIPELINE.get(pipeline_tag or "")
    if generative or mt:
        return hinted if hinted in (TTS, STT) else TEXT
    return hinted or UNKNOWN


def pipeline_label(pipeline_tag: str | None) -> str:
    """The type label for a hub pipeline tag (the tag itself when it is not one of ours)."""
    kind = _TYPE_BY_PIPELINE.get(pipeline_tag or "")
    return TYPE_LABELS[kind] if kind else (pipeline_tag or "")


def template_features(template: str | None) -> TemplateFeatures:
    if not template:
        return TemplateFeatures(has_template=False, tools=False, thinking=False)
    return TemplateFeatures(
        has_template=True,
        tools=bool(_TOOLS_RE.search(template)),
        thinking=any(m in template for m in _THINKING_MARKERS),
    )


def chat_template_from(tokenizer_config: Mapping[str, Any] | None) -> str | None:
    """The default template from tokenizer_config.json (a string, or a list of named ones)."""
    if not tokenizer_config:
        return None
    value = tokenizer_config.get("chat_template")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        chosen = named.get("default") or next(iter(named.values()), None)
        return chosen if isinstance(chosen, str) else None
    return None


def bytes_from_parameters(parameters: Mapping[str, int] | None) -> int | None:
    """Weight bytes from the hub's per-dtype parameter counts (exact for MLX's packed U32)."""
    if not parameters:
        return None
    total = 0
    for name, count in parameters.items():
        size = _DTYPE_BYTES.get(name.upper())
        if size is None or not isinstance(count, int):
            return None
        total += size * count
    return total
