"""The profile form: parses what the browser sent; `profile_create`/`profile_update` validate it."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from mlxmanager.profiles.models import Profile
from mlxmanager.profiles.schemas import GENERATION_KEYS, field_limits
from mlxmanager.profiles.selectors import LocalModel

OTHER = ""

# Service parameter -> form field showing its error.
_PARAM_FIELD = {"model_path": "model_choice", "draft_model_path": "draft_choice"}


def _number(field: forms.Field, name: str, step: str) -> forms.Field:
    attrs = {"step": step, "placeholder": "model default", **field_limits(name)}
    field.widget.attrs.update({k: str(v) for k, v in attrs.items()})
    return field


class ProfileForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="The model id clients send, e.g. qwen3-8b-fast. Letters, digits, - and _."
    )
    model_choice = forms.ChoiceField(label="Model", required=False)
    model_path_other = forms.CharField(
        label="…or a path", required=False, max_length=500, help_text="Any directory with an MLX model."
    )
    kind = forms.ChoiceField(
        label="Type",
        choices=[(OTHER, "Detect from the model's config"), *Profile.KIND_CHOICES],
        initial=OTHER,
        required=False,
        help_text="Text and vision answer /v1/chat/completions; embeddings /v1/embeddings; speech to text "
        "/v1/audio/transcriptions; text to speech /v1/audio/speech.",
    )
    description = forms.CharField(required=False, max_length=300)
    enabled = forms.BooleanField(required=False, initial=True, help_text="Served to clients.")
    is_default = forms.BooleanField(required=False, label="Default profile")

    temperature = _number(forms.FloatField(required=False), "temperature", "0.05")
    top_p = _number(forms.FloatField(required=False), "top_p", "0.01")
    top_k = _number(forms.IntegerField(required=False), "top_k", "1")
    min_p = _number(forms.FloatField(required=False), "min_p", "0.01")
    repetition_penalty = _number(forms.FloatField(required=False), "repetition_penalty", "0.01")
    presence_penalty = _number(forms.FloatField(required=False), "presence_penalty", "0.1")
    frequency_penalty = _number(forms.FloatField(required=False), "frequency_penalty", "0.1")
    max_tokens = _number(forms.IntegerField(required=False), "max_tokens", "1")
    seed = _number(forms.IntegerField(required=False), "seed", "1")
    stop = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Stop sequences, one a line.",
    )

    system_prompt = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Used when a request has no system message.",
    )
    chat_template_kwargs = forms.CharField(
        label="Chat-template options",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": '{"enable_thinking": false}'}),
        help_text="A JSON object passed to the chat template.",
    )
    tool_parser = forms.CharField(required=False, max_length=50, help_text="Blank: inferred from the model.")
    reasoning_parser = forms.CharField(
        required=False, max_length=50, help_text="Blank: inferred from the model."
    )

    draft_choice = forms.ChoiceField(label="Draft model", required=False)
    draft_path_other = forms.CharField(label="…or a path", required=False, max_length=500)
    num_draft_tokens = forms.IntegerField(
        label="Draft tokens", initial=3, widget=forms.NumberInput(attrs={"min": 1, "max": 16})
    )
    kv_bits = forms.TypedChoiceField(
        label="KV cache bits",
        choices=[("", "Full precision"), ("8", "8-bit"), ("4", "4-bit")],
        coerce=int,
        empty_value=None,
        required=False,
        help_text="Quantized KV caches serve one request at a time.",
    )
    context_length = forms.IntegerField(
        required=False,
        widget=forms.NumberInput(attrs={"min": 16, "placeholder": "model's own"}),
        help_text="Longest prompt + answer, in tokens.",
    )
    max_output_tokens = forms.IntegerField(
        label="Max answer tokens",
        required=False,
        widget=forms.NumberInput(attrs={"min": 1, "placeholder": "no cap"}),
        help_text="Requests asking for more get a 400.",
    )
    prompt_cache_bytes = forms.CharField(
        label="Prompt cache",
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "worker default"}),
        help_text='Bytes of cached prompt prefixes kept for this model, e.g. "2GB".',
    )
    max_concurrent = forms.IntegerField(
        initial=32,
        widget=forms.NumberInput(attrs={"min": 1, "max": 256}),
        help_text="Requests decoded at once; more wait.",
    )

    pinned = forms.BooleanField(required=False, help_text="Never evicted to make room.")
    preload = forms.BooleanField(required=False, label="Preload at start")
    keep_alive_seconds = forms.IntegerField(
        label="Keep alive (seconds)",
        required=False,
        widget=forms.NumberInput(attrs={"min": 1, "placeholder": "until evicted"}),
        help_text="Unload after this long idle.",
    )

    def __init__(self, *args: Any, local_models: list[LocalModel], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label_suffix = ""
        options = [
            (m.path, f"{m.label} — {m.path}" + (f" (used by {', '.join(m.used_by)})" if m.used_by else ""))
            for m in local_models
        ]
        model_field = self.fields["model_choice"]
        draft_field = self.fields["draft_choice"]
        assert isinstance(model_field, forms.ChoiceField) and isinstance(draft_field, forms.ChoiceField)
        model_field.choices = [(OTHER, "Choose a local model…"), *options]
        draft_field.choices = [(OTHER, "None (no speculative decoding)"), *options]

    @classmethod
    def initial_for(cls, profile: Profile, known_paths: set[str]) -> dict[str, Any]:
        defaults = profile.defaults or {}
        initial: dict[str, Any] = {
            f: getattr(profile, f)
            for f in (
                "name",
                "kind",
                "description",
                "enabled",
                "is_default",
                "system_prompt",
                "tool_parser",
                "reasoning_parser",
                "num_draft_tokens",
                "kv_bits",
                "context_length",
                "max_output_tokens",
                "max_concurrent",
                "pinned",
                "preload",
                "keep_alive_seconds",
                "prompt_cache_bytes",
            )
        }
        initial.update({k: v for k, v in defaults.items() if k != "stop"})
        initial["stop"] = "\n".join(defaults.get("stop") or [])
        kwargs = profile.chat_template_kwargs or {}
        initial["chat_template_kwargs"] = json.dumps(kwargs) if kwargs else ""
        for path, choice, other in (
            (profile.model_path, "model_choice", "model_path_other"),
            (profile.draft_model_path, "draft_choice", "draft_path_other"),
        ):
            if path in known_paths:
                initial[choice] = path
            else:
                initial[other] = path
        return initial

    def clean_chat_template_kwargs(self) -> dict[str, Any]:
        raw = (self.cleaned_data.get("chat_template_kwargs") or "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise forms.ValidationError('write a JSON object, e.g. {"enable_thinking": false}')
        return value

    def service_values(self) -> dict[str, Any]:
        """The cleaned form as keyword arguments of profile_create / profile_update."""
        d = self.cleaned_data
        defaults = {k: d[k] for k in GENERATION_KEYS if k != "stop" and d.get(k) is not None}
        stop = [line for line in (d.get("stop") or "").splitlines() if line.strip()]
        if stop:
            defaults["stop"] = stop
        values = {
            "name": d["name"],
            "model_path": (d.get("model_path_other") or "").strip() or d.get("model_choice") or "",
            "kind": d.get("kind") or "",
            "description": d.get("description") or "",
            "enabled": bool(d.get("enabled")),
            "is_default": bool(d.get("is_default")),
            "defaults": defaults,
            "system_prompt": d.get("system_prompt") or "",
            "chat_template_kwargs": d.get("chat_template_kwargs") or {},
            "tool_parser": d.get("tool_parser") or "",
            "reasoning_parser": d.get("reasoning_parser") or "",
            "draft_model_path": (d.get("draft_path_other") or "").strip() or d.get("draft_choice") or "",
            "num_draft_tokens": d["num_draft_tokens"],
            "kv_bits": d.get("kv_bits"),
            "context_length": d.get("context_length"),
            "max_output_tokens": d.get("max_output_tokens"),
            "max_concurrent": d["max_concurrent"],
            "pinned": bool(d.get("pinned")),
            "preload": bool(d.get("preload")),
            "keep_alive_seconds": d.get("keep_alive_seconds"),
            "prompt_cache_bytes": (d.get("prompt_cache_bytes") or "").strip() or None,
        }
        if not values["kind"]:
            del values["kind"]  # detected from the model's config.json
        return values

    def add_service_error(self, param: str | None, message: str) -> None:
        field = (param or "").removeprefix("defaults.")
        field = _PARAM_FIELD.get(field, field)
        self.add_error(field if field in self.fields else None, message)

    def generation_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in GENERATION_KEYS if name != "stop"]
