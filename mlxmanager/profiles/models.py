from __future__ import annotations

from django.db import models


class Profile(models.Model):
    """A named, served model: what clients ask for in `model`, with its defaults."""

    KIND_LLM = "llm"
    KIND_CHOICES = [(KIND_LLM, "Text generation")]

    name = models.SlugField(max_length=100, unique=True, help_text="The model id clients send.")
    model_path = models.CharField(max_length=500, help_text="Directory of the MLX model.")
    kind = models.CharField(max_length=20, choices=KIND_CHOICES, default=KIND_LLM)
    description = models.CharField(max_length=300, blank=True)
    # Generation defaults applied to every request that doesn't set them.
    defaults = models.JSONField(default=dict, blank=True)
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
    is_default = models.BooleanField(default=False)
    is_test_model = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
