"""A budget holds across web processes (PostgreSQL + Redis, `make test-team`): two web
processes on one database and one Redis, each with its own worker. B counts the key once (its
counter is seeded), then A's traffic uses the budget up: B refuses at once, because the period's
count lives in Redis, not in each process (a per-process counter seeded before A's traffic
would still let B serve)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import free_port, manage, stop_gateway
from tests.test_deployment import REDIS_URL, needs_team_services, serve, team_database  # noqa: F401

TINY = "tiny-random"
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.mark.slow
@pytest.mark.team
@pytest.mark.xdist_group("live")
@needs_team_services
def test_key_budget_holds_across_two_web_processes(
    demo_models: dict[str, Path],
    tmp_path: Path,
    team_database: str,  # noqa: F811
) -> None:
    from tests.conftest import _shared_dir

    env = {**os.environ, "DATABASE_URL": team_database, "REDIS_URL": REDIS_URL, "MLXM_LOG_LEVEL": "WARNING",
           "MLXM_AUDIT_FLUSH_INTERVAL": "0.2", "MLXM_SECRET_KEY": "team-budget-test-secret-key-0123456789",
           "MLXM_DATA_DIR": str(tmp_path / "a"), "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}  # fmt: skip
    env.pop("HF_TOKEN", None)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    manage("migrate", "--noinput", "-v0", env=env)
    manage("prepare_demo_models", "--data-dir", str(_shared_dir()), env=env)
    manage(
        "create_admin", "--username", "admin", "--password-stdin", env=env, stdin="correct-horse-battery\n"
    )
    key = (
        manage("create_api_key", "--username", "admin", "--name", "budgeted", env=env)
        .strip()
        .splitlines()[-1]
    )
    manage("shell", "-c", "from mlxmanager.accounts.models import ApiKey; from mlxmanager.usage.services "
           "import set_budget; set_budget(api_key_id=ApiKey.objects.get(name='budgeted').pk, tokens_per_day=40)",
           env=env)  # fmt: skip
    a = serve(env, free_port(), tmp_path / "a.log")
    b = serve({**env, "MLXM_DATA_DIR": str(tmp_path / "b")}, free_port(), tmp_path / "b.log")
    try:
        a.wait_healthy()
        b.wait_healthy()
        via_a = openai.OpenAI(base_url=a.v1, api_key=key, max_retries=0, timeout=120)
        via_b = openai.OpenAI(base_url=b.v1, api_key=key, max_retries=0, timeout=120)
        first = via_b.chat.completions.create(model=TINY, messages=HELLO, max_tokens=1)
        assert first.usage is not None and first.usage.total_tokens < 40  # B's counter is seeded now
        big = via_a.chat.completions.create(model=TINY, messages=HELLO, max_tokens=48)
        assert big.usage is not None and first.usage.total_tokens + big.usage.total_tokens >= 40
        deadline = time.monotonic() + 10  # A counts the request as its audit row is recorded
        while True:
            try:
                via_b.chat.completions.create(model=TINY, messages=HELLO, max_tokens=1)
            except openai.RateLimitError as exc:
                assert exc.body["code"] == "budget_exceeded"
                assert 0 < int(exc.response.headers["retry-after"]) <= 86400
                break
            assert time.monotonic() < deadline, "B never saw the tokens A served"
            time.sleep(0.2)
        with pytest.raises(openai.RateLimitError):
            via_a.chat.completions.create(model=TINY, messages=HELLO, max_tokens=1)
    finally:
        stop_gateway(a)
        stop_gateway(b)
