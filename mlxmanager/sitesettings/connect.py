"""The Connect page's copy-ready setup: the server's address, a key and a model filled in."""

from __future__ import annotations

import json
from dataclasses import dataclass

CLAUDE_MODEL = "claude-sonnet-4-5"  # what Claude Code asks for; the built-in rule serves it locally
CLAUDE_FAST_MODEL = "claude-haiku-4-5"


@dataclass(frozen=True)
class Snippet:
    id: str
    title: str
    note: str
    text: str


def default_model() -> str:
    """The model name to show: the Settings page's default model, else the default profile."""
    from mlxmanager.profiles.models import Profile
    from mlxmanager.sitesettings import selectors

    name = selectors.value("default_model")
    if name:
        return str(name)
    profile = Profile.objects.filter(enabled=True).order_by("-is_default", "name").first()
    return profile.name if profile else "MODEL"


def build(*, root: str, key: str, model: str) -> list[Snippet]:
    v1 = f"{root}/v1"
    q = json.dumps
    return [
        Snippet("claude-code", "Claude Code", "Run in the shell that starts `claude`. Its claude-* model "
                "names are served by the local default model unless a rule sends them elsewhere.",
                f"export ANTHROPIC_BASE_URL={root}\n"
                f"export ANTHROPIC_AUTH_TOKEN={key}\n"
                f"export ANTHROPIC_MODEL={CLAUDE_MODEL}\n"
                f"export ANTHROPIC_DEFAULT_SONNET_MODEL={CLAUDE_MODEL}\n"
                f"export ANTHROPIC_DEFAULT_HAIKU_MODEL={CLAUDE_FAST_MODEL}\n"
                "claude"),
        Snippet("openai-python", "OpenAI SDK (Python)", "pip install openai",
                "from openai import OpenAI\n\n"
                f"client = OpenAI(base_url={q(v1)}, api_key={q(key)})\n"
                f"reply = client.chat.completions.create(model={q(model)}, "
                'messages=[{"role": "user", "content": "Hello"}])\n'
                "print(reply.choices[0].message.content)"),
        Snippet("anthropic-python", "Anthropic SDK (Python)", "pip install anthropic",
                "import anthropic\n\n"
                f"client = anthropic.Anthropic(base_url={q(root)}, api_key={q(key)})\n"
                f"reply = client.messages.create(model={q(model)}, max_tokens=256, "
                'messages=[{"role": "user", "content": "Hello"}])\n'
                "print(reply.content[0].text)"),
        Snippet("openai-js", "OpenAI SDK (JavaScript)", "npm install openai",
                'import OpenAI from "openai";\n\n'
                f"const client = new OpenAI({{ baseURL: {q(v1)}, apiKey: {q(key)} }});\n"
                f"const reply = await client.chat.completions.create({{ model: {q(model)}, "
                'messages: [{ role: "user", content: "Hello" }] });\n'
                "console.log(reply.choices[0].message.content);"),
        Snippet("curl", "curl", "Any OpenAI-compatible client works the same way.",
                f"curl {v1}/chat/completions \\\n"
                f'  -H "Authorization: Bearer {key}" \\\n'
                '  -H "Content-Type: application/json" \\\n'
                f"  -d '{{\"model\": {q(model)}, \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'"),
        Snippet("continue", "Continue (VS Code, JetBrains)", "In ~/.continue/config.yaml:",
                "models:\n"
                "  - name: MLX Manager\n"
                "    provider: openai\n"
                f"    model: {model}\n"
                f"    apiBase: {v1}\n"
                f"    apiKey: {key}"),
        Snippet("cursor", "Cursor", "Settings → Models → OpenAI API Key: turn on “Override OpenAI "
                "Base URL”, then add the model name under Models.",
                f"Base URL: {v1}\nAPI key:  {key}\nModel:    {model}"),
        Snippet("zed", "Zed", "In settings.json; Zed asks for the API key the first time "
                "(or set it in the Agent panel's settings).",
                json.dumps({"language_models": {"openai_compatible": {"MLX Manager": {
                    "api_url": v1, "available_models": [{"name": model, "max_tokens": 32768}]}}}},
                    indent=2)),
    ]  # fmt: skip
