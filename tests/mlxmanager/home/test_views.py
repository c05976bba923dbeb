"""The home page: the admin's live dashboard and first-run checklist, a member's overview."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from mlxmanager.accounts.services import api_key_create
from mlxmanager.downloads.models import Download
from mlxmanager.profiles.models import Profile
from tests.mlxmanager.audit.factories import rows
from tests.mlxmanager.home.conftest import Browser

pytestmark = pytest.mark.django_db

MIN = timedelta(minutes=1)
# What a swapped region must not hold: anything that can have the keyboard focus.
FOCUSABLE = re.compile(r"<(a|button|input|select|textarea|summary|details)\b|tabindex|contenteditable", re.I)


def _stat(html: str, name: str) -> str:
    m = re.search(rf'data-stat="{name}">([^<]*)<', html)
    assert m, f"no {name} stat"
    return m.group(1).strip()


@pytest.fixture
def traffic(frozen: datetime, boss: User) -> None:
    """30 requests in the last hour (3 failed), TTFT 10..300 ms; 4 more earlier today."""
    for i in range(30):
        rows(1, start=frozen - (i + 1) * MIN, username="ana" if i % 3 else "bo", requested_model="smol",
             completion_tokens=60, ttft_ms=10.0 * (i + 1), status=500 if i < 3 else 200)  # fmt: skip
    rows(4, start=frozen - timedelta(hours=5), username="cy", requested_model="tiny")


# ---- the admin's dashboard -----------------------------------------------------------------


def test_admin_home_shows_the_dashboard_numbers(
    admin_browser: Browser, traffic: None, worker_up: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    Download.objects.create(repo_id="org/big-model", status=Download.Status.RUNNING, local_dir="/m/big",
                            bytes_total=1000, bytes_done=250, speed=50.0)  # fmt: skip
    Profile.objects.create(name="smol", model_path="/m/smol", is_default=True)
    # session + user, checklist, profiles, traffic (2), today (<= 3), downloads, registered workers,
    # the run-time settings (read once per TTL, mlxmanager/sitesettings)
    with django_assert_max_num_queries(12):
        resp = admin_browser.get("/")
    assert resp.status_code == 200
    html = resp.content.decode()
    window_min = (59 * 60 + 15) / 60  # 11:31:00 .. 12:30:15
    assert _stat(html, "rpm") == f"{30 / window_min:.2f}"  # 0.51
    assert _stat(html, "tps") == f"{30 * 60 / (window_min * 60):.2f}"  # 0.51 tokens/s
    assert _stat(html, "errors") == "10.0%"
    assert _stat(html, "ttft") == "290 ms"  # nearest rank: the 29th of 10..300
    assert "30 in the last hour" in html
    # Health: web, the worker (pid, load), the downloader (no heartbeat here).
    assert re.search(r'data-process="Web server">.*?badge ok">up', html, re.S)
    assert re.search(r'data-process="Inference worker">.*?badge ok">up.*?pid 4242', html, re.S)
    assert re.search(r'data-process="Downloader">.*?badge bad">down', html, re.S)
    # Loaded models with their memory.
    assert "3.0\xa0GB of 12.0\xa0GB" in html and "25.0%" in html
    assert re.search(r'data-model="smollm2-135m-instruct">.*?2\.5\xa0GB', html, re.S)
    # Today's top users and models (the 5-hour-old rows count, yesterday's would not).
    users = html[html.index('id="live-users"') : html.index('id="live-top-models"')]
    assert users.index("<td>ana</td>") < users.index("<td>bo</td>") < users.index("<td>cy</td>")
    top_models = html[html.index('id="live-top-models"') : html.index('id="live-downloads"')]
    assert top_models.index("<code>smol</code>") < top_models.index("<code>tiny</code>")
    # The running download.
    assert "org/big-model" in html and "25%" in html
    # The served models table and the nav.
    assert "Served models" in html and 'aria-current="page">Home' in html
    # Live: a hidden poller, swapping out of band, without a focus or scroll jump.
    assert 'hx-get="/home/live/?checklist=1"' in html
    assert 'hx-trigger="every 5s"' in html and 'hx-swap="none focus-scroll:false"' in html


def test_the_dashboard_without_a_worker(admin_browser: Browser, frozen: datetime) -> None:
    html = admin_browser.get("/").content.decode()
    assert re.search(r'data-process="Inference worker">.*?badge bad">down', html, re.S)
    assert "Unknown while the worker is down." in html
    assert _stat(html, "rpm") == "0" and _stat(html, "errors") == "—" and _stat(html, "ttft") == "—"
    assert "No requests yet today." in html and "None running." in html


def test_the_live_partial_swaps_only_regions_without_focusable_elements(
    admin_browser: Browser, traffic: None, worker_up: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    with django_assert_max_num_queries(11):
        resp = admin_browser.get("/home/live/?checklist=1", htmx=True)
    assert resp.status_code == 200
    html = resp.content.decode()
    regions = re.findall(
        r'<(?:div|span) id="([\w-]+)" (?:class="[^"]*" )?hx-swap-oob="(?:innerHTML|true)"', html
    )
    assert regions == ["live-stats", "live-health", "live-models", "live-users", "live-top-models", "live-downloads",
                       "tick-key", "tick-snippet", "tick-playground", "tick-invite", "tick-model", "checklist-count"]  # fmt: skip
    assert not FOCUSABLE.search(html), FOCUSABLE.search(html)
    assert _stat(html, "errors") == "10.0%"
    # The page's regions are the same markup (no focusable element in them either).
    page = admin_browser.get("/").content.decode()
    for region in (
        "live-stats",
        "live-health",
        "live-models",
        "live-users",
        "live-top-models",
        "live-downloads",
    ):
        start = page.index(f'<div id="{region}"')
        body = page[start : page.index("</section>", start)]
        assert not FOCUSABLE.search(body), (region, FOCUSABLE.search(body))


def test_the_live_partial_leaves_the_checklist_alone_unless_asked(admin_browser: Browser) -> None:
    html = admin_browser.get("/home/live/", htmx=True).content.decode()
    assert "tick-" not in html and "checklist-count" not in html


def test_the_live_partial_is_for_admins(member_browser: Browser, anonymous_browser: Browser) -> None:
    assert member_browser.get("/home/live/", htmx=True).status_code == 403
    # A poll after the session ended sends the browser to the login page.
    resp = anonymous_browser.get("/home/live/", htmx=True)
    assert resp.status_code == 200 and resp["HX-Redirect"] == "/login/?next=/"
    resp = anonymous_browser.get("/home/live/")
    assert resp.status_code == 302 and resp["Location"].startswith("/login/")


# ---- the first-run checklist ------------------------------------------------------------


def _ticks(html: str) -> dict[str, bool]:
    return {
        m.group(2): bool(m.group(3)) for m in re.finditer(r'id="tick-(([\w]+))" class="tick( done)?"', html)
    }


def test_the_checklist_on_a_fresh_install(admin_browser: Browser, boss: User) -> None:
    Profile.objects.create(name="smollm2-135m-instruct", model_path="/m/smol", is_default=True)
    html = admin_browser.get("/").content.decode()
    assert "Get started" in html
    assert _ticks(html) == dict.fromkeys(("key", "snippet", "playground", "invite", "model"), False)
    assert '<span id="checklist-count">0</span> of 5 done' in html
    # The snippets carry the real base URL and a served model.
    assert "curl http://testserver/v1/chat/completions" in html
    assert 'OpenAI(base_url="http://testserver/v1", api_key=os.environ["MLXM_API_KEY"])' in html
    assert 'model="smollm2-135m-instruct"' in html
    for link in ("/keys/", "/playground/", "/users/", "/models/discover/"):
        assert f'href="{link}"' in html


def test_the_checklist_ticks_and_then_goes(admin_browser: Browser, boss: User) -> None:
    api_key_create(user=boss, name="laptop")
    rows(
        1,
        start=datetime.now().astimezone() - MIN,
        user_id=boss.pk,
        username="boss",
        endpoint="/v1/chat/completions",
    )
    html = admin_browser.get("/").content.decode()
    assert _ticks(html) == {
        "key": True,
        "snippet": True,
        "playground": False,
        "invite": False,
        "model": False,
    }
    live = admin_browser.get("/home/live/?checklist=1", htmx=True).content.decode()
    assert _ticks(live)["snippet"] and '<span id="checklist-count" hx-swap-oob="true">2</span>' in live

    rows(1, start=datetime.now().astimezone() - MIN, user_id=boss.pk, username="boss", endpoint="/v1/ws/chat")
    get_user_model().objects.create_user(username="colleague", password="pw-colleague-1234")
    Download.objects.create(repo_id="org/m", local_dir="/m/org--m")
    html = admin_browser.get("/").content.decode()
    assert "Get started" not in html and "tick-" not in html  # all done: the checklist is gone
    assert 'hx-get="/home/live/"' in html  # and the poll no longer asks for it


# ---- a member's home -----------------------------------------------------------------------


def test_member_home_is_their_own(
    member_browser: Browser, member: User, frozen: datetime, django_assert_max_num_queries: Any
) -> None:
    Profile.objects.create(name="smol", model_path="/m/smol", is_default=True)
    api_key_create(user=member, name="laptop")
    rows(3, start=frozen - 5 * MIN, username="member", completion_tokens=90)
    rows(2, start=frozen - timedelta(days=2), username="member")
    rows(40, start=frozen - 5 * MIN, username="someone-else")
    with django_assert_max_num_queries(11):
        resp = member_browser.get("/")
    html = resp.content.decode()
    assert resp.status_code == 200
    assert re.search(r'data-usage="today-requests">3<', html)
    assert re.search(r'data-usage="week-requests">5<', html)
    assert "300 tokens" in html  # 3 x (10 + 90)
    assert "laptop" in html and 'href="/keys/"' in html
    assert 'href="/playground/">Start a chat</a>' in html
    assert "Served models" in html and "<code>smol</code>" in html
    assert "curl http://testserver/v1/chat/completions" in html
    # No dashboard, no checklist, no poll, nothing about other people.
    for absent in ("Get started", "home-poll", "live-stats", "Top users", "someone-else", "Health"):
        assert absent not in html


def test_the_member_with_no_key_is_offered_one(member_browser: Browser) -> None:
    html = member_browser.get("/").content.decode()
    assert "No active key." in html
    assert re.search(r'data-usage="today-requests">0</span> requests', html)


def test_home_needs_login(anonymous_browser: Browser) -> None:
    resp = anonymous_browser.get("/")
    assert resp.status_code == 302 and resp["Location"] == "/login/?next=/"


# ---- the served models (everyone) ---------------------------------------------------------


@pytest.mark.parametrize("who", ["member_browser", "admin_browser"])
def test_home_lists_enabled_profiles_default_first(who: str, request: pytest.FixtureRequest) -> None:
    Profile.objects.create(name="alpha", model_path="/m/a", description="A model")
    Profile.objects.create(name="zeta", model_path="/m/z", is_default=True)
    Profile.objects.create(name="tiny", model_path="/m/t", is_test_model=True)
    Profile.objects.create(name="switched-off", model_path="/m/h", enabled=False)

    resp = request.getfixturevalue(who).get("/")
    assert resp.status_code == 200
    html = resp.content.decode()
    served = html[html.index('id="served-models-title"') :]
    assert "switched-off" not in html
    assert served.index("zeta") < served.index("alpha") < served.index("tiny")
    assert 'badge">default' in served
    assert "test model" in served
    assert "http://testserver/v1" in served
    assert 'aria-current="page">Home' in html


def test_home_without_profiles(member_browser: Browser) -> None:
    html = member_browser.get("/").content.decode()
    assert "No profiles yet" in html
    assert 'model="smollm2-135m-instruct"' in html  # the snippet still names the demo model


def test_the_query_count_does_not_grow_with_the_data(
    admin_browser: Browser, frozen: datetime, boss: User, django_assert_max_num_queries: Any
) -> None:
    def count() -> int:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as ctx:
            assert admin_browser.get("/").status_code == 200
            assert admin_browser.get("/home/live/?checklist=1", htmx=True).status_code == 200
        return len(ctx)

    rows(1, start=frozen - MIN, ttft_ms=5.0)  # one of each: every query runs
    Download.objects.create(repo_id="org/a", status=Download.Status.RUNNING, local_dir="/m/a")
    few = count()
    for i in range(40):
        rows(25, start=frozen - timedelta(minutes=i * 9), step=timedelta(seconds=13), username=f"user{i}",
             requested_model=f"model{i % 7}", ttft_ms=float(i), status=500 if i % 5 == 0 else 200)  # fmt: skip
        Download.objects.create(repo_id=f"org/m{i}", status=Download.Status.QUEUED, local_dir=f"/m/{i}")
        Profile.objects.create(name=f"p{i}", model_path=f"/m/p{i}")
    assert count() == few <= 23


def test_no_link_on_home_is_named_like_a_nav_link(
    admin_browser: Browser, member_browser: Browser, worker_up: dict[str, Any]
) -> None:
    """Tests (and screen-reader users) find the nav's links by name, and a name matches as a
    substring: a card's "Pool" link would make `get_by_role("link", name="Pool")` ambiguous."""
    for browser in (admin_browser, member_browser):
        html = browser.get("/").content.decode()
        nav = html[html.index('<nav id="site-nav"') : html.index("</nav>")]
        names = [re.sub(r"\s+", " ", n).strip().lower() for n in re.findall(r"<a [^>]*>([^<]+)</a>", nav)]
        body = html[html.index("<main") :]
        links = [re.sub(r"\s+", " ", n).strip().lower() for n in re.findall(r"<a [^>]*>([^<]+)</a>", body)]
        assert len(names) >= 4 and len(links) >= 2
        clashes = [(link, name) for link in links for name in names if name in link]
        assert not clashes, clashes
