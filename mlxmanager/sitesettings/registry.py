"""The settings an admin can change on the Settings page: what each one is, its environment
variable (the default), how a value is checked, and where it takes effect.

`applies`: "web" (the web processes read it through the cached accessor: live within
MLXM_SETTINGS_CACHE_SECONDS), "worker" (sent to the running worker over its protocol when
saved, and to every worker started later) or "restart" (stored; takes effect when the
processes restart).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from inference.env import parse_size, physical_memory

WEB, WORKER, RESTART = "web", "worker", "restart"
APPLIES = {
    WEB: "live (web, within a few seconds)",
    WORKER: "live (sent to the worker)",
    RESTART: "after a restart",
}


class Invalid(ValueError):
    """A value a setting refuses; the message says why."""


@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    env: str  # the environment variable that is the default ("" for none)
    applies: str
    help: str
    parse: Callable[[Any], Any]  # raw (form text or JSON value) -> stored value; raises Invalid
    widget: str = "text"  # text, textarea, password
    secret: bool = False

    def env_raw(self) -> str:
        return os.environ.get(self.env, "") if self.env else ""


def _text(raw: Any, *, max_len: int = 2000) -> str:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise Invalid("must be text")
    text = str(raw).strip()
    if len(text) > max_len:
        raise Invalid(f"must be at most {max_len} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise Invalid("must not contain control characters")
    return text


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise Invalid("must be a whole number")
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        try:
            value = raw if isinstance(raw, int) else int(_text(raw))
        except (ValueError, OverflowError) as exc:
            if isinstance(exc, Invalid):
                raise
            raise Invalid(f"must be a whole number, not {str(raw)[:40]!r}") from None
        if not lo <= value <= hi:
            raise Invalid(f"must be between {lo} and {hi}")
        return value

    return parse


def _seconds(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise Invalid("must be a number of seconds")
        try:
            value = float(raw if isinstance(raw, int | float) else _text(raw))
        except (ValueError, OverflowError):
            raise Invalid(f"must be a number of seconds, not {str(raw)[:40]!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise Invalid(f"must be between {lo:g} and {hi:g} seconds")
        return value

    return parse


def _size(*, of: Callable[[], int] | None, lo: int) -> Callable[[Any], str]:
    """Kept as typed ("12GB", "75%"): a percentage follows the machine it runs on."""

    def parse(raw: Any) -> str:
        text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else _text(raw, max_len=40)
        try:
            value = parse_size(text, of=of() if of else None, name="value")
        except (ValueError, OverflowError) as exc:
            raise Invalid(str(exc).removeprefix("value: ") or "is not a size") from None
        if value < lo:
            raise Invalid(f"must be at least {lo >> 20} MB")
        return text

    return parse


def memory_limit_bytes(text: str) -> int:
    return parse_size(text, of=physical_memory(), name="memory_limit")


def prompt_cache_bytes(text: str, memory_limit: int) -> int:
    return parse_size(text, of=memory_limit, name="prompt_cache")


def _profile_name(raw: Any) -> str:
    from mlxmanager.profiles.models import Profile

    name = _text(raw, max_len=100)
    if not Profile.objects.filter(name=name).exists():
        raise Invalid(f"no profile is named '{name[:100]}'")
    return name


def _aliases(raw: Any) -> dict[str, str]:
    """An object {"alias": "profile"}; the form sends lines "alias = profile"."""
    from mlxmanager.profiles.models import Profile

    if isinstance(raw, str):
        out: dict[str, str] = {}
        for n, line in enumerate(raw.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            alias, sep, target = line.partition("=")
            if not sep:
                raise Invalid(f"line {n}: write 'alias = profile'")
            out[alias.strip()] = target.strip()
        raw = out
    if not isinstance(raw, dict):
        raise Invalid("must be an object of alias: profile name")
    if len(raw) > 200:
        raise Invalid("at most 200 aliases")
    names = set(Profile.objects.values_list("name", flat=True))
    clean: dict[str, str] = {}
    for alias, target in raw.items():
        a = _text(alias, max_len=256)
        t = _text(target, max_len=100) if isinstance(target, str) else ""
        if not a or not t:
            raise Invalid("each alias needs a name and a profile")
        if t not in names:
            raise Invalid(f"alias '{a[:60]}': no profile is named '{t[:60]}'")
        if a in names:
            raise Invalid(f"alias '{a[:60]}' is already a profile's name")
        clean[a] = t
    return clean


def _url(raw: Any) -> str:
    text = _text(raw, max_len=500).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise Invalid("must be an http(s) URL such as https://huggingface.co")
    return text


def _origins(raw: Any) -> list[str]:
    items = raw.replace("\n", ",").split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list) or len(items) > 100:
        raise Invalid("must be a list of origins (at most 100)")
    out = []
    for item in items:
        text = _text(item, max_len=300).rstrip("/")
        if not text:
            continue
        if text != "*":
            parts = urlsplit(text)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
                raise Invalid(f"'{text[:80]}' is not an origin like https://app.example.com (or *)")
        out.append(text)
    return out


def _token(raw: Any) -> str:
    text = _text(raw, max_len=400)
    if any(c.isspace() for c in text):
        raise Invalid("must not contain spaces")
    return text


SPECS: tuple[Spec, ...] = (
    Spec("memory_limit", "Memory limit", "MLXM_MEMORY_LIMIT", WORKER,
         'Weights, KV caches and prompt caches together: "12GB" or "75%" of RAM.',
         _size(of=physical_memory, lo=64 << 20)),
    Spec("prompt_cache", "Prompt cache per model", "MLXM_PROMPT_CACHE_BYTES", WORKER,
         'Each model\'s prompt-cache share: "512MB" or a percentage of the memory limit.',
         _size(of=lambda: 1 << 40, lo=0)),
    Spec("disk_cache_bytes", "Disk prompt cache (bytes)", "MLXM_DISK_CACHE_BYTES", RESTART,
         "The disk tier's byte budget (0 turns it off).", _int(0, 1 << 50)),
    Spec("max_queue", "Queue length per model", "MLXM_MAX_QUEUE", WORKER,
         "Requests that may wait per model beyond the running ones (0: none wait; blank: no limit).",
         _int(0, 100_000)),
    Spec("max_user_concurrent", "Requests per user per model", "MLXM_MAX_USER_CONCURRENT", WORKER,
         "One user's requests to one model, running and waiting (blank: no limit).", _int(1, 100_000)),
    Spec("queue_timeout", "Queue timeout (seconds)", "MLXM_QUEUE_TIMEOUT", WORKER,
         "A request waiting longer gets a 503 (0 or blank: no limit).", _seconds(0, 86_400)),
    Spec("local_timeout", "Local generation timeout (seconds)", "MLXM_LOCAL_TIMEOUT", WEB,
         "How long a local model may take to start answering (blank: no limit; rules have their own).",
         _seconds(1, 86_400)),
    Spec("default_model", "Default model", "", WEB,
         "The profile behind the built-in cloud-names rule (blank: the profile marked default).",
         _profile_name),
    Spec("model_aliases", "Model aliases", "", WEB,
         "One per line, 'alias = profile': requests for the alias are served by that profile.",
         _aliases, widget="textarea"),
    Spec("audit_retention_days", "Audit retention (days)", "MLXM_AUDIT_RETENTION_DAYS", WEB,
         "Request rows older than this are deleted (0: keep forever).", _int(0, 36_500)),
    Spec("hf_endpoint", "Hugging Face endpoint", "MLXM_HF_ENDPOINT", WEB,
         "The hub Discover and Downloads use (a mirror or a proxy).", _url),
    Spec("hf_token", "Hugging Face token", "HF_TOKEN", WEB,
         "For gated or private models; stored encrypted like credentials, never shown.",
         _token, widget="password", secret=True),
    Spec("cors_origins", "CORS origins for /v1", "MLXM_CORS_ORIGINS", WEB,
         "Comma-separated browser origins allowed to call /v1, or * (blank: off).",
         _origins, widget="textarea"),
)  # fmt: skip
BY_KEY = {s.key: s for s in SPECS}


def shown(spec: Spec, value: Any) -> str:
    """A stored value as the form shows it."""
    if value is None:
        return ""
    if spec.key == "model_aliases":
        return "\n".join(f"{a} = {t}" for a, t in value.items())
    if spec.key == "cors_origins":
        return ", ".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value)
