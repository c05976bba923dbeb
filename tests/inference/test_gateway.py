from typing import Any

from inference import gateway
from inference import protocol as p
from inference.api.openai import chat_prompt
from inference.schemas import ChatCompletionRequest
from mlxmanager.profiles.models import Profile


def chat_request(b: ChatCompletionRequest, target: gateway.Target) -> p.Generate:
    """The worker request the pipeline builds for a chat body (profile merged in one place)."""
    return gateway.worker_request(chat_prompt(b), target, [], request_id=gateway.worker_id("chatcmpl-"))


def sampling_for(b: ChatCompletionRequest, pr: Profile, *, max_tokens: int | None) -> p.SamplingParams:
    prompt = chat_prompt(b)
    prompt.max_tokens = max_tokens
    return gateway.worker_request(prompt, gateway.Target(pr), [], request_id="x").sampling


def body(**kw: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "p", "messages": [{"role": "user", "content": "hi"}], **kw}
    )


def profile(**defaults: object) -> Profile:
    return Profile(name="p", model_path="/m", defaults=defaults)


def test_request_values_win_over_profile_defaults() -> None:
    s = sampling_for(body(temperature=0.5), profile(temperature=0.9, top_k=5, max_tokens=10), max_tokens=None)
    assert s.temperature == 0.5
    assert s.top_k == 5
    assert s.max_tokens == 10


def test_builtin_defaults_fill_the_rest() -> None:
    s = sampling_for(body(), profile(), max_tokens=None)
    assert s.max_tokens == p.DEFAULT_MAX_TOKENS
    assert s.seed is None and s.stop == []


def test_stop_and_logit_bias_are_normalised() -> None:
    s = sampling_for(body(stop="END", logit_bias={"7": -5}), profile(stop=["x"]), max_tokens=3)
    assert s.stop == ["END"]
    assert s.logit_bias == {7: -5.0}
    assert s.max_tokens == 3
    assert sampling_for(body(), profile(stop=["x"]), max_tokens=None).stop == ["x"]


def test_profile_system_prompt_is_prepended_unless_the_client_sent_one() -> None:
    target = gateway.Target(Profile(name="p", model_path="/m", system_prompt="You are terse."))
    req = chat_request(body(), target)
    assert req.messages is not None and req.messages[0] == {"role": "system", "content": "You are terse."}
    req = chat_request(
        body(messages=[{"role": "system", "content": "mine"}, {"role": "user", "content": "q"}]), target
    )
    assert req.messages is not None and req.messages[0]["content"] == "mine"
    assert req.request_id.startswith("chatcmpl-")


def test_chat_template_options_merge_request_over_profile() -> None:
    pr = Profile(name="p", model_path="/m", chat_template_kwargs={"enable_thinking": False, "x": 1})
    req = chat_request(body(chat_template_kwargs={"enable_thinking": True}), gateway.Target(pr))
    assert req.chat_template_kwargs == {"enable_thinking": True, "x": 1}


def test_spec_carries_pool_policy() -> None:
    pr = Profile(
        name="p", model_path="/m", pinned=True, keep_alive_seconds=60, max_concurrent=4, context_length=2048
    )
    spec = gateway.Target(pr).spec
    assert (spec.pinned, spec.keep_alive_s, spec.max_concurrent, spec.context_length) == (True, 60.0, 4, 2048)
    assert spec.prompt_cache_bytes is None  # the worker's MLXM_PROMPT_CACHE_BYTES
    pr.prompt_cache_bytes = 3_000_000
    assert gateway.Target(pr).spec.prompt_cache_bytes == 3_000_000


def test_profile_caps_max_tokens() -> None:
    import pytest

    from mlxmanager.errors import DomainError

    capped = Profile(name="p", model_path="/m", max_output_tokens=16, defaults={"max_tokens": 100})
    # Asking for more than the cap is a clear error naming the parameter and the cap.
    with pytest.raises(DomainError) as exc:
        sampling_for(body(), capped, max_tokens=17)
    assert exc.value.param == "max_tokens" and "at most 16" in str(exc.value)
    # Within the cap it is honoured; left out, the profile default is clipped to the cap.
    assert sampling_for(body(), capped, max_tokens=16).max_tokens == 16
    assert sampling_for(body(), capped, max_tokens=None).max_tokens == 16


def test_the_worker_request_says_who_asks(settings: Any) -> None:
    from django.contrib.auth import get_user_model

    from mlxmanager.accounts.models import ApiKey

    settings.MLXM_PRIORITY_WEIGHTS = {"admin": 2.5}
    member, admin = get_user_model()(username="mia"), get_user_model()(username="ada", is_staff=True)
    key = ApiKey(user=member, name="ci", prefix="mlxm-ab12", digest="x" * 64)
    who = gateway.requester(key, None)
    assert who == gateway.Requester(user="mia", key="mlxm-ab12", weight=1.0)
    assert gateway.requester(None, admin) == gateway.Requester(user="ada", weight=2.5)  # the playground
    req = gateway.worker_request(chat_prompt(body()), gateway.Target(profile()), [], request_id="r", who=who)
    assert (req.user, req.key, req.weight) == ("mia", "mlxm-ab12", 1.0)
    assert "x" * 64 not in repr(req)  # never the key's secret or digest
    anonymous = gateway.worker_request(chat_prompt(body()), gateway.Target(profile()), [], request_id="r")
    assert (anonymous.user, anonymous.key, anonymous.weight) == ("", "", 1.0)
