"""The first admin in the browser: the one-time setup link `manage.py serve` prints."""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import AsyncClient, Client
from django.urls import reverse

from inference.management.commands import serve
from mlxmanager.accounts import setup
from tests.mlxmanager.accounts.conftest import UserFactory

pytestmark = pytest.mark.django_db

GOOD = "a-long-admin-password-42"


@pytest.fixture(autouse=True)
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.MLXM_DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def token() -> str:
    return setup.setup_token_issue()


def token_file(data_dir: Path) -> Path:
    return data_dir / setup.TOKEN_FILE


def open_link(client: Client, token: str) -> Any:
    return client.get(f"/setup/{token}")


def submit(client: Client, username: str = "root", p1: str = GOOD, p2: str | None = None) -> Any:
    return client.post(
        "/setup/", {"username": username, "password1": p1, "password2": p1 if p2 is None else p2}
    )


# --- the token file --------------------------------------------------------------------


def test_the_token_is_stored_hashed_and_owner_only(data_dir: Path, token: str) -> None:
    path = token_file(data_dir)
    stored = path.read_text()
    assert token not in stored
    assert stored == setup.digest_of(token) and len(stored) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 43  # token_urlsafe(32)
    assert [p.name for p in data_dir.iterdir()] == [setup.TOKEN_FILE]  # no temporary file left


def test_a_new_token_replaces_the_old_one(token: str) -> None:
    newer = setup.setup_token_issue()
    assert setup.token_matches(newer)
    assert not setup.token_matches(token)


# --- the flow --------------------------------------------------------------------------


def test_the_link_opens_the_form_and_creates_the_admin_once(
    client: Client, data_dir: Path, token: str
) -> None:
    resp = open_link(client, token)
    assert resp.status_code == 302 and resp["Location"] == reverse("setup")
    assert resp["Cache-Control"].startswith("max-age=0")
    form = client.get("/setup/")
    assert form.status_code == 200
    html = form.content.decode()
    assert "<h1>Create the admin</h1>" in html
    assert token not in html  # the form posts to /setup/, not to the link
    assert 'action="/setup/"' in html and "csrfmiddlewaretoken" in html

    done = submit(client)
    assert done.status_code == 302 and done["Location"] == reverse("home")
    admin = get_user_model().objects.get()
    assert admin.username == "root" and admin.is_staff and admin.is_superuser
    assert admin.check_password(GOOD)
    assert client.session["_auth_user_id"] == str(admin.pk)  # logged in
    assert not token_file(data_dir).exists()
    assert list(data_dir.iterdir()) == []  # the claimed copy is gone too
    home = AsyncClient()  # the home page is an async view
    home.cookies = client.cookies
    page = async_to_sync(home.get)("/")
    assert page.status_code == 200
    assert "Get started" in page.content.decode()  # lands on the first-run checklist

    # Once: the link, the form and a second submission are all 404 now.
    assert open_link(Client(), token).status_code == 404
    assert client.get("/setup/").status_code == 404
    assert submit(client, username="again").status_code == 404
    assert get_user_model().objects.count() == 1


@pytest.mark.parametrize(
    "wrong",
    ["nope", "x" * 43, "a" * 300, "%00", "..%2F..%2Fsecret_key"],
    ids=["short", "same-length", "long", "nul", "dots"],
)
def test_a_wrong_token_is_a_404(client: Client, token: str, wrong: str) -> None:
    assert open_link(client, wrong).status_code == 404
    assert client.get("/setup/").status_code == 404  # the session got nothing
    assert submit(client).status_code == 404
    assert not get_user_model().objects.exists()


def test_without_a_token_file_everything_is_a_404(client: Client, data_dir: Path) -> None:
    assert open_link(client, "anything").status_code == 404
    assert client.get("/setup/").status_code == 404


def test_a_session_from_an_older_token_no_longer_works(client: Client, token: str) -> None:
    open_link(client, token)
    setup.setup_token_issue()  # serve restarted: a new link
    assert client.get("/setup/").status_code == 404
    assert submit(client).status_code == 404
    assert not get_user_model().objects.exists()


def test_once_a_user_exists_the_link_is_a_404_and_the_file_goes(
    client: Client, data_dir: Path, token: str, make_user: UserFactory
) -> None:
    open_link(client, token)  # opened before someone used the command line
    make_user(username="cli-admin", admin=True)
    assert client.get("/setup/").status_code == 404
    assert submit(client).status_code == 404
    assert open_link(Client(), token).status_code == 404
    assert not token_file(data_dir).exists()
    assert get_user_model().objects.count() == 1


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"p1": "short"}, "password1", "at least"),
        ({"p1": "password123456"}, "password1", "too common"),
        ({"p1": "root-root-root-root"}, "password1", "must not contain the username"),
        ({"p2": "something-else-entirely"}, "password2", "The two passwords differ."),
        ({"p1": ""}, "password1", "Choose a password."),
        ({"username": "  "}, "username", "1-150 characters"),
        ({"username": "two words"}, "username", "1-150 characters"),
    ],
)
def test_errors_are_shown_and_the_username_kept(
    client: Client, data_dir: Path, token: str, fields: dict[str, str], field: str, message: str
) -> None:
    open_link(client, token)
    username = fields.pop("username", "root")
    resp = submit(client, username=username, **fields)
    assert resp.status_code == 400
    html = resp.content.decode()
    assert message in html.replace("&#x27;", "'")
    assert f'id="{field}-error"' in html
    assert re.search(rf'aria-describedby="{field}-error[ "]', html)
    if username.strip():
        assert f'value="{username}"' in html
    assert GOOD not in html
    assert not get_user_model().objects.exists()
    # Nothing was spent: the token still works and the right values create the admin.
    assert token_file(data_dir).exists()
    assert submit(client).status_code == 302
    assert get_user_model().objects.get().username == "root"


def test_a_taken_claim_stops_a_second_submission(client: Client, data_dir: Path, token: str) -> None:
    open_link(client, token)
    claimed = setup.setup_token_claim(setup.digest_of(token))
    assert claimed is not None and not token_file(data_dir).exists()
    assert submit(client).status_code == 404  # another request holds the token
    setup.setup_token_release(claimed)
    assert token_file(data_dir).exists() and not claimed.exists()
    assert submit(client).status_code == 302


def test_a_release_keeps_a_newer_token(data_dir: Path, token: str) -> None:
    claimed = setup.setup_token_claim(setup.digest_of(token))
    assert claimed is not None
    newer = setup.setup_token_issue()
    setup.setup_token_release(claimed)
    assert setup.token_matches(newer) and not setup.token_matches(token)


def test_the_command_line_way_stays(monkeypatch: pytest.MonkeyPatch, data_dir: Path, token: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD + "\n"))
    out = io.StringIO()
    call_command("create_admin", "--username", "cli", "--password-stdin", stdout=out)
    assert "Created admin 'cli'" in out.getvalue()
    assert Client().get(f"/setup/{token}").status_code == 404
    assert not token_file(data_dir).exists()


# --- serve prints the link -------------------------------------------------------------


class _Exited:
    returncode = 0

    def poll(self) -> int:
        return 0

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int:
        return 0


def _serve(monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    monkeypatch.setattr(serve, "_spawn", lambda cmd, env: _Exited())
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)
    out, err = io.StringIO(), io.StringIO()
    call_command("serve", "--no-worker", "--no-downloads", *args, stdout=out, stderr=err)
    return out.getvalue()


def test_serve_prints_a_setup_link_while_no_user_exists(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    printed = _serve(monkeypatch, "--host", "0.0.0.0", "--port", "8123")  # noqa: S104
    line = next(x.strip() for x in printed.splitlines() if "/setup/" in x)
    assert line.startswith("http://127.0.0.1:8123/setup/")
    token = line.rsplit("/", 1)[1]
    assert setup.token_matches(token)
    assert token not in token_file(data_dir).read_text()
    assert "create_admin" in printed  # the command-line way is still mentioned
    assert token not in caplog.text  # stdout only, never a log record
    # It works in the browser.
    client = Client()
    assert client.get(f"/setup/{token}").status_code == 302
    assert submit(client).status_code == 302


@pytest.mark.parametrize(("host", "shown"), [("::", "[::1]"), ("192.0.2.7", "192.0.2.7"), ("::1", "[::1]")])
def test_the_link_host(host: str, shown: str) -> None:
    assert serve._link_host(host) == shown


def test_serve_prints_no_link_once_a_user_exists(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, make_user: UserFactory
) -> None:
    setup.setup_token_issue()  # left over from an earlier start
    make_user(username="someone")
    printed = _serve(monkeypatch)
    assert "/setup/" not in printed
    assert not token_file(data_dir).exists()
    assert os.listdir(data_dir) == []
