from __future__ import annotations

import json

from django.db import models


class Profile(models.Model):
    """A named, served model: what clients ask for in `model`, with its defaults."""

    KIND_LLM = "llm"
    KIND_EMBEDDINGS = "embeddings"
    KIND_VISION = "vision"
    KIND_STT = "stt"
    KIND_TTS = "tts"
    KIND_CHOICES = [
        (KIND_LLM, "Text generation"),
        (KIND_VISION, "Vision (images + text)"),
        (KIND_EMBEDDINGS, "Embeddings"),
        (KIND_STT, "Speech to text"),
        (KIND_TTS, "Text to speech"),
    ]
    # What each kind answers (the dashboard and the /v1 errors name it).
    KIND_ENDPOINTS = {
        KIND_LLM: "/v1/chat/completions",
        KIND_VISION: "/v1/chat/completions",
        KIND_EMBEDDINGS: "/v1/embeddings",
        KIND_STT: "/v1/audio/transcriptions",
        KIND_TTS: "/v1/audio/speech",
    }

    name = models.SlugField(max_length=100, unique=True, help_text="The model id clients send.")
    model_path = models.CharField(max_length=500, help_text="Directory of the MLX model.")
    kind = models.CharField(max_length=20, choices=KIND_CHOICES, default=KIND_LLM)
    description = models.CharField(max_length=300, blank=True)
    # Generation defaults applied to every request that doesn't set them (see GENERATION_KEYS).
    defaults = models.JSONField(default=dict, blank=True)
    system_prompt = models.TextField(
        blank=True, help_text="Prepended when the client sends no system message."
    )
    context_length = models.PositiveIntegerField(
        null=True, blank=True, help_text="Longest prompt + answer accepted, in tokens (blank: the model's)."
    )
    max_output_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Most tokens one answer may ask for; larger max_tokens get a 400 (blank: no cap).",
    )
    chat_template_kwargs = models.JSONField(
        default=dict, blank=True, help_text='Chat-template options, e.g. {"enable_thinking": false}.'
    )
    tool_parser = models.CharField(
        max_length=50, blank=True, help_text="Override the inferred tool-call parser."
    )
    reasoning_parser = models.CharField(max_length=50, blank=True, help_text="Override the reasoning parser.")
    pinned = models.BooleanField(default=False, help_text="Never evicted from the pool.")
    preload = models.BooleanField(default=False, help_text="Loaded when the worker starts.")
    keep_alive_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Unload after this long idle (blank: keep until evicted)."
    )
    max_concurrent = models.PositiveSmallIntegerField(
        default=32, help_text="Requests decoded at once; more wait in the model's queue."
    )
    draft_model_path = models.CharField(
        max_length=500, blank=True, help_text="Draft model for speculative decoding (single streams)."
    )
    num_draft_tokens = models.PositiveSmallIntegerField(default=3)
    kv_bits = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        choices=[(4, "4-bit"), (8, "8-bit")],
        help_text="Quantize the KV cache. Requests to this profile are then served one at a time.",
    )
    prompt_cache_bytes = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="This model's prompt-cache share in bytes (blank: the worker's MLXM_PROMPT_CACHE_BYTES).",
    )
    is_default = models.BooleanField(default=False)
    is_test_model = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def endpoint(self) -> str:
        return self.KIND_ENDPOINTS.get(self.kind, "")

    @property
    def generates_text(self) -> bool:
        return self.kind in (self.KIND_LLM, self.KIND_VISION)

    @property
    def defaults_json(self) -> str:
        return json.dumps(self.defaults or {})

    @property
    def model_dir_name(self) -> str:
        return self.model_path.rstrip("/").rsplit("/", 1)[-1]
