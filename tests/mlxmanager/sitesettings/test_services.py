from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from mlxmanager.audit.models import AdminAction
from mlxmanager.downloads import hub
from mlxmanager.profiles.models import Profile
from mlxmanager.sitesettings import selectors
from mlxmanager.sitesettings.models import SiteSetting
from mlxmanager.sitesettings.services import (
    SettingsInvalid,
    settings_update,
    validate,
    worker_config,
    worker_env,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def profiles() -> None:
    Profile.objects.create(name="small", model_path="/m/small", is_default=True)
    Profile.objects.create(name="big", model_path="/m/big")


@pytest.mark.parametrize(
    ("values", "key", "words"),
    [
        ({"max_queue": "-1"}, "max_queue", "between 0 and"),
        ({"max_queue": "lots"}, "max_queue", "whole number"),
        ({"max_user_concurrent": 0}, "max_user_concurrent", "between 1 and"),
        ({"queue_timeout": "nan"}, "queue_timeout", "between 0 and"),
        ({"memory_limit": "12 parsecs"}, "memory_limit", "Memory limit"),
        ({"memory_limit": "1KB"}, "memory_limit", "at least"),
        ({"default_model": "no-such-model"}, "default_model", "no profile is named 'no-such-model'"),
        ({"model_aliases": "gpt-4o"}, "model_aliases", "alias = profile"),
        ({"model_aliases": {"gpt-4o": "nope"}}, "model_aliases", "no profile is named 'nope'"),
        ({"model_aliases": {"small": "big"}}, "model_aliases", "already a profile's name"),
        ({"hf_endpoint": "ftp://hub"}, "hf_endpoint", "http(s) URL"),
        ({"cors_origins": "https://app.example.com/path"}, "cors_origins", "not an origin"),
        ({"hf_token": "two words"}, "hf_token", "spaces"),
        ({"no_such_setting": 1}, "no_such_setting", "is not a setting"),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_the_setting(
    profiles: None, values: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(SettingsInvalid) as caught:
        validate(values)
    assert caught.value.param == key and words in caught.value.errors[key]
    assert not SiteSetting.objects.exists()


def test_a_change_is_stored_audited_and_read_at_once(profiles: None, boss: User) -> None:
    assert selectors.value("max_queue") is None and selectors.value("audit_retention_days") == 90
    result = settings_update(
        values={"max_queue": "3", "audit_retention_days": 30, "default_model": "big",
                "model_aliases": "gpt-4o = small\n# comment\nclaude-x = big",
                "cors_origins": "https://a.example, https://b.example/"},
        user=boss,
    )  # fmt: skip
    assert result["changed"] == [
        "audit_retention_days",
        "cors_origins",
        "default_model",
        "max_queue",
        "model_aliases",
    ]
    assert result["applied"]["max_queue"] == "live (sent to the worker)"
    assert result["worker"].startswith("the worker is not reachable")  # no worker in unit tests
    # The cache was dropped on save: this process reads the new values now.
    assert selectors.value("max_queue") == 3 and selectors.value("audit_retention_days") == 30
    assert selectors.value("model_aliases") == {"gpt-4o": "small", "claude-x": "big"}
    assert selectors.value("cors_origins") == ["https://a.example", "https://b.example"]
    assert selectors.default_profile_name() == "big"
    action = AdminAction.objects.get(action="mlxmanager.settings.changed")
    assert action.actor_name == "boss" and action.data["max_queue"] == [None, 3]
    assert action.data["audit_retention_days"] == [None, 30]

    # Saving the same values records nothing; clearing goes back to the environment's default.
    assert settings_update(values={"max_queue": 3}, user=boss)["changed"] == []
    settings_update(values={"max_queue": None, "default_model": ""}, user=boss)
    assert selectors.value("max_queue") is None and selectors.default_profile_name() == "small"
    assert AdminAction.objects.filter(action="mlxmanager.settings.changed").count() == 2
    assert AdminAction.objects.filter(action="mlxmanager.settings.changed").first().data["max_queue"] == [
        3,
        None,
    ]


def test_other_processes_see_a_change_after_the_ttl(profiles: None, boss: User, settings: Any) -> None:
    settings.MLXM_SETTINGS_CACHE_SECONDS = 3600
    assert selectors.value("max_queue") is None  # cached now
    SiteSetting.objects.create(key="max_queue", value=5)  # as another process would
    assert selectors.value("max_queue") is None
    settings.MLXM_SETTINGS_CACHE_SECONDS = 0
    assert selectors.value("max_queue") == 5


def test_the_hub_token_is_stored_encrypted_and_never_shown(boss: User) -> None:
    settings_update(values={"hf_token": "hf_secret_value_123"}, user=boss)
    hub.forget_stored_token()
    assert hub.token() == "hf_secret_value_123"
    row = next(r for r in selectors.rows() if r["key"] == "hf_token")
    assert row["source"] == "database" and row["value"] is None
    actions = AdminAction.objects.filter(action="mlxmanager.settings.changed")
    assert "hf_secret_value_123" not in str(list(actions.values_list("data", flat=True)))
    settings_update(values={"hf_token": None}, user=boss)
    hub.forget_stored_token()
    assert hub.stored_token() is None


def test_the_hub_endpoint_follows_the_setting(boss: User) -> None:
    settings_update(values={"hf_endpoint": "http://127.0.0.1:9/mirror/"}, user=boss)
    assert hub.endpoint() == "http://127.0.0.1:9/mirror"


def test_worker_settings_become_its_configuration_and_its_environment(boss: User) -> None:
    settings_update(values={"max_queue": 0, "max_user_concurrent": "2", "queue_timeout": "7.5",
                            "memory_limit": "2GB", "prompt_cache": "25%"}, user=boss)  # fmt: skip
    config = worker_config()
    assert config == {"max_queue": 0, "max_user": 2, "queue_timeout_s": 7.5,
                      "memory_limit_bytes": 2_000_000_000, "prompt_cache_bytes": 500_000_000}  # fmt: skip
    assert worker_env() == {"MLXM_MEMORY_LIMIT": "2GB", "MLXM_PROMPT_CACHE_BYTES": "25%", "MLXM_MAX_QUEUE": "0",
                            "MLXM_MAX_USER_CONCURRENT": "2", "MLXM_QUEUE_TIMEOUT": "7.5"}  # fmt: skip
