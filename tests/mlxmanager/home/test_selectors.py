"""The home dashboard's numbers, computed from audit rows made here, each a bounded query."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from mlxmanager.accounts.services import api_key_create
from mlxmanager.downloads.models import Download
from mlxmanager.downloads.selectors import heartbeat_path
from mlxmanager.home import selectors
from mlxmanager.profiles.models import Profile
from mlxmanager.workers.models import Worker
from tests.mlxmanager.audit.factories import rows
from tests.mlxmanager.home.conftest import NOW

pytestmark = pytest.mark.django_db

MIN = timedelta(minutes=1)


# ---- the last hour ---------------------------------------------------------------------


def test_traffic_of_the_last_hour(django_assert_num_queries: Any) -> None:
    hour_start = NOW.replace(second=0) - 59 * MIN  # 11:31:00, the window's first minute
    # 40 fast successes over the last 40 minutes, 2 tokens/s decode, TTFT 100..139 ms.
    for i in range(40):
        rows(1, start=NOW - (i + 1) * MIN, completion_tokens=30, ttft_ms=100.0 + i, tokens_per_s=2.0)
    # 10 errors in the current minute (no TTFT, no decode rate): a 500 and a 200 with an error type.
    rows(5, start=NOW.replace(second=0), step=timedelta(seconds=2), status=500, completion_tokens=0)
    rows(
        5, start=NOW.replace(second=1), step=timedelta(seconds=2), error_type="cancelled", completion_tokens=0
    )
    # Outside the window: before it, and after "now".
    rows(7, start=hour_start - timedelta(seconds=8), ttft_ms=9999.0)
    rows(3, start=NOW + timedelta(seconds=1), ttft_ms=9999.0)

    with django_assert_num_queries(2):
        t = selectors.traffic(now=NOW)

    assert t.since == hour_start and t.until == NOW
    assert t.requests == 50 and t.errors == 10
    assert t.error_pct == pytest.approx(20.0)
    assert t.completion_tokens == 40 * 30
    assert t.prompt_tokens == 50 * 10
    window_s = (NOW - hour_start).total_seconds()  # 59 min 15 s
    assert t.requests_per_minute == pytest.approx(50 / (window_s / 60))
    assert t.tokens_per_s == pytest.approx(1200 / window_s)
    assert t.decode_tokens_per_s == pytest.approx(2.0)
    # Nearest-rank p95 of 100..139: the 38th smallest (ceil(0.95 * 40)).
    assert t.ttft_p95_ms == pytest.approx(137.0)
    assert len(t.per_minute) == 60 and sum(t.per_minute) == 50
    assert t.per_minute[-1] == 10  # the current minute
    assert t.per_minute[-2] == 1  # 12:29:15
    assert t.per_minute[:19] == (0,) * 19  # 11:31 .. 11:49: nothing yet
    assert t.peak == 10
    bars = t.bars()
    assert len(bars) == 60 and bars[-1]["h"] == pytest.approx(38.0) and bars[0]["h"] == 0


def test_an_empty_hour_is_one_query_and_no_percentile(django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(1):
        t = selectors.traffic(now=NOW)
    assert (t.requests, t.errors, t.ttft_p95_ms, t.decode_tokens_per_s, t.error_pct) == (
        0,
        0,
        None,
        None,
        None,
    )
    assert t.requests_per_minute == 0 and t.tokens_per_s == 0
    assert t.per_minute == (0,) * 60


@pytest.mark.parametrize(("n", "rank"), [(1, 1), (2, 2), (19, 19), (20, 19), (21, 20), (100, 95)])
def test_the_ttft_percentile_is_the_nearest_rank(n: int, rank: int) -> None:
    for i in range(n):  # TTFTs 1..n ms, inserted in reverse
        rows(1, start=NOW - timedelta(seconds=i + 1), ttft_ms=float(n - i))
    assert selectors.traffic(now=NOW).ttft_p95_ms == float(rank)


# ---- today ---------------------------------------------------------------------------------


def test_top_users_and_models_today(django_assert_max_num_queries: Any) -> None:
    midnight = NOW.replace(hour=0, minute=0, second=0)
    rows(6, start=midnight + timedelta(hours=2), username="ana", requested_model="big")
    rows(3, start=NOW - 10 * MIN, username="bo", requested_model="big", status=429)
    rows(2, start=NOW - 10 * MIN, username="ana", requested_model="small")
    rows(50, start=midnight - timedelta(hours=3), username="yesterday", requested_model="old")

    with django_assert_max_num_queries(3):
        today = selectors.today(now=NOW)

    assert today.since == midnight
    assert [(u["username"], u["requests"], u["errors"]) for u in today.users] == [("ana", 8, 0), ("bo", 3, 3)]
    assert [(m["requested_model"], m["requests"]) for m in today.models] == [("big", 9), ("small", 2)]
    assert today.users[0]["prompt_tokens"] == 80 and today.users[0]["completion_tokens"] == 40


def test_today_keeps_the_top_five() -> None:
    for i in range(7):
        rows(i + 1, start=NOW - timedelta(hours=1), username=f"user{i}", requested_model=f"m{i}")
    today = selectors.today(now=NOW)
    assert [u["username"] for u in today.users] == ["user6", "user5", "user4", "user3", "user2"]
    assert len(today.models) == 5


# ---- downloads, profiles -------------------------------------------------------------------


def _download(repo: str, status: str) -> Download:
    return Download.objects.create(repo_id=repo, status=status, local_dir=f"/models/{repo}", bytes_total=100)


def test_running_downloads_are_the_active_ones(django_assert_num_queries: Any) -> None:
    _download("a/queued", Download.Status.QUEUED)
    _download("a/running", Download.Status.RUNNING)
    _download("a/done", Download.Status.COMPLETED)
    _download("a/paused", Download.Status.PAUSED)
    with django_assert_num_queries(1):
        running = selectors.running_downloads()
    assert [d.repo_id for d in running] == ["a/queued", "a/running"]


# ---- the checklist ---------------------------------------------------------------------


def test_the_checklist_ticks_itself_from_real_state(boss: User, django_assert_num_queries: Any) -> None:
    def check() -> selectors.Checklist:
        with django_assert_num_queries(1):
            return selectors.checklist(user=boss)

    # A fresh install: the demo profiles exist, nothing else.
    Profile.objects.create(name="smollm2-135m-instruct", model_path="/m/smol")
    first = check()
    assert first.items == [(name, False) for name in ("key", "snippet", "playground", "invite", "model")]
    assert first.done == 0 and not first.complete

    other = get_user_model().objects.create_user(username="someone", password="pw-x-123456789")
    api_key_create(user=other, name="theirs")
    rows(1, start=NOW, user_id=other.pk, username="someone")  # someone else's request
    assert check().items == [
        ("key", False),
        ("snippet", False),
        ("playground", False),
        ("invite", True),
        ("model", False),
    ]

    api_key_create(user=boss, name="mine")
    assert check().key
    rows(1, start=NOW, user_id=boss.pk, username="boss", endpoint="/v1/ws/chat")
    c = check()
    assert c.playground and not c.api_call  # the playground is not the snippet
    rows(1, start=NOW, user_id=boss.pk, username="boss", endpoint="/v1/models")
    assert check().api_call

    Profile.objects.create(name="my-own-model", model_path="/m/mine")
    c = check()
    assert c.model and c.complete and c.done == 5


def test_a_download_counts_as_adding_a_model(boss: User) -> None:
    _download("org/model", Download.Status.FAILED)
    assert selectors.checklist(user=boss).model


# ---- a member's usage ----------------------------------------------------------------------


def test_usage_is_the_users_own(member: User, django_assert_max_num_queries: Any) -> None:
    rows(4, start=NOW - 2 * MIN, username="member", completion_tokens=7)
    rows(1, start=NOW - MIN, username="member", status=500)
    rows(9, start=NOW - MIN, username="someone-else")
    rows(2, start=NOW - timedelta(days=3), username="member")
    since = selectors.start_of_today(NOW)
    with django_assert_max_num_queries(3):
        today = selectors.usage(user=member, since=since, now=NOW)
    assert (today.requests, today.errors, today.prompt_tokens, today.completion_tokens) == (5, 1, 50, 33)
    assert today.tokens == 83
    week = selectors.usage(user=member, since=NOW - timedelta(days=7), now=NOW)
    assert week.requests == 7
    assert selectors.usage(user=member, since=NOW + MIN, now=NOW + 2 * MIN).requests == 0


def test_active_keys_leave_out_revoked_and_expired(member: User, django_assert_num_queries: Any) -> None:
    from django.utils import timezone

    api_key_create(user=member, name="live")
    revoked, _ = api_key_create(user=member, name="revoked")
    revoked.revoked_at = timezone.now()
    revoked.save()
    expired, _ = api_key_create(user=member, name="expired")
    expired.expires_at = timezone.now() - MIN
    expired.save()
    with django_assert_num_queries(1):
        keys = selectors.active_keys(user=member)
    assert [k.name for k in keys] == ["live"]


# ---- the processes -------------------------------------------------------------------------


def test_fleet_with_everything_down(django_assert_num_queries: Any) -> None:
    Worker.objects.create(name="gpu-box", address="tcp://127.0.0.1:1", enabled=True)
    Worker.objects.create(name="off", address="tcp://127.0.0.1:2", enabled=False)
    with django_assert_num_queries(1):
        fleet = async_to_sync(selectors.fleet)()
    names = [(p.name, p.role, p.up) for p in fleet.processes]
    assert names == [
        ("Web server", "web", True),
        ("Inference worker", "worker", False),
        ("gpu-box", "worker", False),
        ("Downloader", "downloader", False),
    ]
    assert fleet.processes[0].pid == os.getpid()
    assert fleet.processes[1].detail  # why it is down
    assert fleet.models == [] and not fleet.all_up


def test_fleet_with_the_worker_up(worker_up: dict[str, Any]) -> None:
    heartbeat_path().touch()
    fleet = async_to_sync(selectors.fleet)(now=time.time())
    assert fleet.all_up
    worker = fleet.workers[0]
    assert (worker.pid, worker.active, worker.queued) == (4242, 2, 1)
    assert worker.used_pct == 25.0
    assert [(m.name, m.worker, m.memory_bytes) for m in fleet.models] == [
        ("all-minilm-l6-v2", "embedded", 90 * 2**20),
        ("smollm2-135m-instruct", "embedded", 2 * 2**30 + 2**29),
    ]
    assert fleet.memory_bytes == 2 * 2**30 + 2**29 + 90 * 2**20


def test_a_remote_worker_that_answers(worker_up: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    Worker.objects.create(name="gpu-box", address="tcp://10.0.0.2:7001", enabled=True)

    async def check(address: str) -> dict[str, Any]:
        assert address == "tcp://10.0.0.2:7001"
        return {"up": True, "pid": 7, "active": 1, "queued": 0, "memory": {"used_bytes": 5, "limit_bytes": 10},
                "loaded": [{"name": "qwen-big", "weight_bytes": 5, "prompt_cache_bytes": 0, "active_requests": 1}]}  # fmt: skip

    monkeypatch.setattr(selectors, "worker_check", check)
    fleet = async_to_sync(selectors.fleet)()
    remote = [p for p in fleet.processes if p.name == "gpu-box"][0]
    assert remote.up and remote.pid == 7 and remote.used_pct == 50.0
    assert [(m.name, m.worker) for m in fleet.models][-1] == ("qwen-big", "gpu-box")
