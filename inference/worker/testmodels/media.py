"""Tiny random-weight models of real vision and speech architectures, built offline.

- `tiny-whisper`: mlx-audio's Whisper (2 encoder + 2 decoder layers) with the real
  multilingual Whisper tokenizer (51,866 tokens: language, task and timestamp tokens),
  converted from the `multilingual.tiktoken` ranks that the `openai-whisper` package ships
  (installed without its dependencies: nothing of it is imported).
- `tiny-tts`: mlx-audio's Soprano (a 2-layer Qwen3 whose hidden states a Vocos decoder
  turns into 32 kHz audio) with the project's tiny BPE tokenizer.
- `tiny-llava`: mlx-vlm's LLaVA (a 2-layer CLIP vision tower, a projector and a 2-layer
  llama) with the tiny tokenizer plus an `<image>` token, and a CLIP image processor.

Random weights make noise and nonsense; the models exist to exercise every code path
(loading, preprocessing, decoding, timestamps, streaming) for real in tests and demos.
Like testmodels.text, no Django and no network; MLX is imported lazily.
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path
from typing import Any, cast

from inference.worker.testmodels.text import _write_json, _write_tokenizer_files

TINY_WHISPER_NAME = "tiny-whisper"
TINY_TTS_NAME = "tiny-tts"
TINY_LLAVA_NAME = "tiny-llava"

_WHISPER_PACKAGE = "whisper"  # openai-whisper, installed --no-deps for its vocabulary


def _random_params(model: Any, seed: int, *, scale: float = 1.0) -> dict[str, Any]:
    """Deterministic random values for every parameter of `model`: fan-in scaled matrices,
    zero biases, unit norms."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    flat = cast(list[tuple[str, Any]], tree_flatten(model.parameters()))
    params = sorted((name, v.shape) for name, v in flat)
    keys = mx.random.split(mx.random.key(seed), len(params))
    out: dict[str, Any] = {}
    for (name, shape), key in zip(params, keys, strict=True):
        leaf = name.rsplit(".", 1)[-1]
        lowered = name.lower()
        if leaf == "bias" or leaf == "beta":
            out[name] = mx.zeros(shape)
        elif ("norm" in lowered or "ln" in lowered.split(".")[-2:][0]) and leaf in ("weight", "gamma"):
            out[name] = mx.ones(shape)
        elif len(shape) == 1:
            out[name] = mx.random.normal(shape, key=key) * 0.02
        else:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            out[name] = mx.random.normal(shape, key=key) * (scale * fan_in**-0.5)
    return out


# --------------------------------------------------------------------------------------
# Whisper
# --------------------------------------------------------------------------------------


def whisper_vocab_path() -> Path:
    """`multilingual.tiktoken` inside the installed openai-whisper package (not imported:
    its `__init__` needs torch)."""
    spec = importlib.util.find_spec(_WHISPER_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "assets" / "multilingual.tiktoken"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "Whisper's vocabulary is missing: install it with "
        "`pip install --no-deps openai-whisper==20250625` (make install does)"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _merge_of(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The two tokens that byte-level BPE merges into `token` (by replaying merges ranked below it)."""
    parts = [bytes([b]) for b in token]
    while True:
        best: tuple[int, int] | None = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} is not a merge of two tokens")
    return parts[0], parts[1]


def whisper_specials() -> list[str]:
    """Whisper's special tokens in id order (its 100 languages: the large-v3 vocabulary)."""
    from mlx_audio.stt.models.whisper.tokenizer import LANGUAGES  # in Whisper's token order

    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in LANGUAGES],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]


def write_whisper_tokenizer(dest: Path, vocab_path: Path | None = None) -> int:
    """Whisper's multilingual tokenizer as Hugging Face files (tokenizer.json, vocab.json,
    merges.txt, tokenizer_config.json); returns the vocabulary size (51,866)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    lines = (vocab_path or whisper_vocab_path()).read_text().split()
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in zip(lines[::2], lines[1::2], strict=True)}
    byte_char = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    merges = [
        (text(left), text(right))
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])
        if len(tok) > 1
        for left, right in [_merge_of(ranks, tok, rank)]
    ]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = whisper_specials()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    size = tok.get_vocab_size()
    if size != len(ranks) + len(specials):
        raise RuntimeError(f"Whisper tokenizer has {size} tokens, expected {len(ranks) + len(specials)}")
    tok.save(str(dest / "tokenizer.json"))
    _write_json(dest / "vocab.json", vocab)
    (dest / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    _write_json(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "WhisperTokenizer",
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "model_max_length": 1024,
            "add_prefix_space": False,
            "errors": "replace",
        },
    )
    _write_json(
        dest / "special_tokens_map.json",
        {
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        },  # fmt: skip
    )
    return size


_WHISPER_DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 1500,  # 30 s windows of 10 ms mel frames, halved by the conv stem
    "n_audio_state": 64,
    "n_audio_head": 2,
    "n_audio_layer": 2,
    "n_text_ctx": 448,
    "n_text_state": 64,
    "n_text_head": 2,
    "n_text_layer": 2,
}


def build_tiny_whisper(dest: Path, seed: int = 0) -> Path:
    """A 2+2-layer random Whisper with the real multilingual tokenizer, loadable with
    `mlx_audio.stt.load(Path(dest))`."""
    import mlx.core as mx
    from mlx_audio.stt.models.whisper.whisper import Model, ModelDimensions

    dest.mkdir(parents=True, exist_ok=True)
    n_vocab = write_whisper_tokenizer(dest)
    config = {"model_type": "whisper", **_WHISPER_DIMS, "n_vocab": n_vocab,
              "mlxmanager": {"test_model": True, "seed": seed}}  # fmt: skip
    model = Model(ModelDimensions.from_dict(config), mx.float32)
    weights = _random_params(model, seed)
    weights = {k: v for k, v in weights.items() if k != "encoder._positional_embedding"}
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    _write_json(dest / "config.json", config)
    _write_json(
        dest / "preprocessor_config.json",
        {
            "feature_extractor_type": "WhisperFeatureExtractor",
            "processor_class": "WhisperProcessor",
            "feature_size": 80,
            "sampling_rate": 16000,
            "hop_length": 160,
            "n_fft": 400,
            "chunk_length": 30,
            "n_samples": 480000,
            "nb_max_frames": 3000,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": False,
        },
    )
    # Cross-attention heads used to align words to audio (word timestamps).
    _write_json(dest / "generation_config.json", {"alignment_heads": [[1, 0], [1, 1]]})
    return dest


# --------------------------------------------------------------------------------------
# Text to speech: Soprano
# --------------------------------------------------------------------------------------

_SOPRANO_SPECIALS = ["[STOP]", "[TEXT]", "[START]", "<|endoftext|>"]
_SOPRANO_CONFIG: dict[str, Any] = {
    "model_type": "soprano",
    "architectures": ["SopranoForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,  # the end rows of lm_head are rigged (below)
    "sample_rate": 32000,
}


def build_tiny_tts(dest: Path, seed: int = 0) -> Path:
    """A random Soprano (2-layer LM; mlx-audio fixes its Vocos decoder at 8 layers of 512,
    stored in float16, ~28 MB), loadable with `mlx_audio.tts.utils.load_model(Path(dest))`.

    Each generated token is 64 ms of 32 kHz audio. The end tokens are rigged never to win,
    so a request makes exactly its profile's `max_tokens` per sentence: set it low.
    """
    import mlx.core as mx
    from mlx_audio.tts.models.soprano import Model, ModelConfig

    from inference.worker.testmodels.text import _train_tiny_tokenizer

    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer(_SOPRANO_SPECIALS)
    tokenizer.save(str(dest / "tokenizer.json"))
    ids = {t: tokenizer.token_to_id(t) for t in _SOPRANO_SPECIALS}
    config = {**_SOPRANO_CONFIG, "vocab_size": tokenizer.get_vocab_size(),
              "eos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["[STOP]"],
              "mlxmanager": {"test_model": True, "seed": seed}}  # fmt: skip
    model = Model(ModelConfig.from_dict({**config, "model_path": str(dest)}))
    w = _random_params(model, seed)
    # Never end early: hidden channel 0 is a constant 1 (every embedding has it, no layer
    # writes it), and the end tokens' lm_head rows read only that channel, very negatively.
    w["language_model.embed_tokens.weight"][:, 0] = 1.0
    for name, value in w.items():
        if name.startswith("language_model.") and name.endswith(("o_proj.weight", "down_proj.weight")):
            value[0, :] = 0.0
    head = w["language_model.lm_head.weight"]
    head[:, 0] = 0.0
    banned = mx.array([ids["[STOP]"], ids["<|endoftext|>"]])
    head[banned] = mx.zeros((2, head.shape[1]))
    head[banned, 0] = -1000.0
    # Audible, bounded noise: the ISTFT head's magnitudes near exp(1).
    out_w, out_b = w["decoder.head.out.weight"], w["decoder.head.out.bias"]
    half = out_w.shape[0] // 2
    out_w[:half] = out_w[:half] * 0.1
    out_b[:half] = 1.0
    # float16 on disk halves the fixed-size decoder; mlx-audio casts it back at load.
    mx.save_safetensors(
        str(dest / "model.safetensors"),
        {k: v.astype(mx.float16) for k, v in w.items()},
        metadata={"format": "mlx"},
    )
    _write_json(dest / "config.json", config)
    _write_tokenizer_files(
        dest,
        special_map={
            "bos_token": "[STOP]",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "[STOP]",
        },  # fmt: skip
        chat_template="",
        model_max_length=config["max_position_embeddings"],
        add_bos_token=False,
    )
    return dest


# --------------------------------------------------------------------------------------
# Vision: LLaVA
# --------------------------------------------------------------------------------------

IMAGE_TOKEN = "<image>"  # noqa: S105 - a token, not a secret
VLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]
IMAGE_SIZE = 32
PATCH_SIZE = 8
# CLIP: one CLS position + (IMAGE_SIZE // PATCH_SIZE)**2 patches; "default" strategy drops CLS.
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2

# ChatML like the other tiny models; image parts become the LLaVA `<image>` placeholder, which
# the LlavaProcessor expands to NUM_IMAGE_TOKENS copies before tokenizing.
VLM_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] in ['image', 'image_url', 'input_image'] %}{{- '<image>\\n' }}"
    "{%- elif part['type'] in ['text', 'input_text'] %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _llava_text_config(tiny: dict[str, Any], vocab: int) -> dict[str, Any]:
    """tiny-random's llama shape, untied so the special tokens' output rows can be rigged."""
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings")  # fmt: skip
    return {
        "model_type": "llama",
        **{k: tiny[k] for k in keys},
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }


_VISION_CONFIG: dict[str, Any] = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,  # must be >= PATCH_SIZE, see the check_array_shape pitfall below
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
    "projection_dim": 32,
    "num_channels": 3,
    "layer_norm_eps": 1e-5,
}
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _llava_params(model: Any, seed: int) -> dict[str, Any]:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(model.parameters()))
    names = sorted(params)
    keys = mx.random.split(mx.random.key(seed), len(names))
    out: dict[str, mx.array] = {}
    for name, key in zip(names, keys, strict=True):
        shape = params[name].shape
        leaf = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        if "norm" in parent or "layrnorm" in parent:  # RMSNorm / LayerNorm (CLIP's "pre_layrnorm")
            out[name] = mx.ones(shape) if leaf == "weight" else mx.zeros(shape)
        elif leaf == "bias":
            out[name] = mx.zeros(shape)
        elif name.endswith("patch_embedding.weight"):  # MLX conv: [out, kH, kW, in]
            fan_in = shape[1] * shape[2] * shape[3]
            out[name] = mx.random.normal(shape, key=key) * fan_in**-0.5
        elif name.endswith("embed_tokens.weight"):
            out[name] = mx.random.normal(shape, key=key)
        elif name.endswith(("position_embedding.weight", "class_embedding")):
            out[name] = mx.random.normal(shape, key=key) * 0.02
        elif len(shape) == 2:  # Linear [out, in]
            out[name] = mx.random.normal(shape, key=key) * shape[-1] ** -0.5
        else:
            raise ValueError(f"don't know how to initialise {name} {shape}")
    return out


def build_tiny_llava(dest: Path, seed: int = 0) -> Path:
    """Write a loadable tiny LLaVA (mlx-vlm `llava`) model directory into `dest`."""
    import mlx.core as mx
    from mlx_vlm.models import llava

    from inference.worker.testmodels.text import (
        _TINY_CONFIG,
        _TINY_VOCAB,
        _banned_ids,
        _rig_output_rows,
        _train_tiny_tokenizer,
    )

    _text_config = _llava_text_config(_TINY_CONFIG, _TINY_VOCAB)
    dest.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tiny_tokenizer(VLM_SPECIALS)
    if tokenizer.get_vocab_size() != _TINY_VOCAB:
        raise RuntimeError(f"tokenizer trained to {tokenizer.get_vocab_size()} tokens")
    tokenizer.save(str(dest / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in VLM_SPECIALS}
    eos, bos, pad = ids["<|im_end|>"], ids["<|im_start|>"], ids["<|endoftext|>"]

    config: dict[str, Any] = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": _text_config,
        "vision_config": _VISION_CONFIG,
        "image_token_index": ids[IMAGE_TOKEN],
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "vocab_size": _TINY_VOCAB,
        "ignore_index": -100,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "mlxmanager": {"test_model": True, "seed": seed},
    }

    # Same config path as mlx_vlm.utils.load_model: ModelConfig.from_dict + sub-configs.
    model_config = llava.ModelConfig.from_dict(config)
    model_config.text_config = llava.TextConfig.from_dict(_text_config)
    model_config.vision_config = llava.VisionConfig.from_dict(_VISION_CONFIG)
    model = llava.Model(model_config)
    weights = _llava_params(model, seed)

    # Ban special tokens (EOS, <image>, ...) and non-printable tokens as tiny-random does, so
    # greedy generations always run to max_tokens and decode to printable ASCII. The rig
    # needs channel 0 of every *text* embedding to be 1 and no layer to write channel 0;
    # generated positions are always text tokens, so image embeddings don't disturb it.
    prefix = "language_model."
    text = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    _rig_output_rows(text, _banned_ids(tokenizer, VLM_SPECIALS))
    weights.update({prefix + k: v for k, v in text.items()})

    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    _write_json(dest / "config.json", config)

    _write_tokenizer_files(
        dest,
        special_map={
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        },
        chat_template=VLM_CHAT_TEMPLATE,
        model_max_length=_text_config["max_position_embeddings"],
        add_bos_token=False,
    )
    # Also as chat_template.jinja: mlx-vlm's LlavaProcessor.from_pretrained calls
    # load_chat_template(), which reads chat_template.json / chat_template.jinja.
    (dest / "chat_template.jinja").write_text(VLM_CHAT_TEMPLATE, encoding="utf-8")
    _write_json(
        dest / "generation_config.json",
        {"bos_token_id": bos, "eos_token_id": [eos, pad], "pad_token_id": pad},
    )
    # AutoImageProcessor -> CLIPImageProcessor (CLIPImageProcessorPil without torchvision).
    _write_json(
        dest / "preprocessor_config.json",
        {
            "image_processor_type": "CLIPImageProcessor",
            "processor_class": "LlavaProcessor",
            "do_resize": True,
            "size": {"shortest_edge": IMAGE_SIZE},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": _CLIP_MEAN,
            "image_std": _CLIP_STD,
            "do_convert_rgb": True,
        },
    )
    # Read by mlx_vlm.models.llava.processing_llava.LlavaProcessor.from_pretrained:
    # num image tokens = (H // patch_size) * (W // patch_size) + num_additional_image_tokens,
    # minus 1 for the "default" strategy.
    _write_json(
        dest / "processor_config.json",
        {
            "processor_class": "LlavaProcessor",
            "patch_size": PATCH_SIZE,
            "vision_feature_select_strategy": "default",
            "image_token": IMAGE_TOKEN,
            "num_additional_image_tokens": 1,
        },
    )
    return dest


MEDIA_MODELS = {
    TINY_WHISPER_NAME: build_tiny_whisper,
    TINY_TTS_NAME: build_tiny_tts,
    TINY_LLAVA_NAME: build_tiny_llava,
}
