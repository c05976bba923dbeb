from __future__ import annotations

import io

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from mlxmanager.accounts.models import ApiKey
from mlxmanager.accounts.selectors import api_key_authenticate

pytestmark = pytest.mark.django_db


def run(
    name: str, *args: str, stdin: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None
) -> str:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    out = io.StringIO()
    call_command(name, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


# --- create_admin --------------------------------------------------------------


def test_create_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    out = run(
        "create_admin",
        "--username=root",
        "--email=root@example.com",
        "--password-stdin",
        stdin="correct-horse-battery\n",
        monkeypatch=monkeypatch,
    )
    assert "Created admin 'root'" in out
    assert "correct-horse-battery" not in out
    user = get_user_model().objects.get(username="root")
    assert user.is_superuser and user.is_staff
    assert user.email == "root@example.com"
    assert user.check_password("correct-horse-battery")


def test_create_admin_reads_only_the_first_line_without_its_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    run(
        "create_admin",
        "--username=root",
        "--password-stdin",
        stdin="correct-horse-battery\r\nsecond line\n",
        monkeypatch=monkeypatch,
    )
    assert get_user_model().objects.get(username="root").check_password("correct-horse-battery")


def test_create_admin_weak_password_is_a_readable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CommandError) as exc:
        run("create_admin", "--username=root", "--password-stdin", stdin="short\n", monkeypatch=monkeypatch)
    assert "too short" in str(exc.value)
    assert "Traceback" not in str(exc.value)
    assert not get_user_model().objects.exists()


def test_create_admin_without_a_password_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CommandError, match="no password"):
        run("create_admin", "--username=root", "--password-stdin", stdin="", monkeypatch=monkeypatch)


def test_create_admin_twice_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("create_admin", "--username=root", "--password-stdin")
    run(*args, stdin="correct-horse-battery\n", monkeypatch=monkeypatch)
    with pytest.raises(CommandError, match="already exists"):
        run(*args, stdin="correct-horse-battery\n", monkeypatch=monkeypatch)


def test_create_admin_requires_password_stdin() -> None:
    with pytest.raises(CommandError):
        call_command("create_admin", "--username=root", stdout=io.StringIO(), stderr=io.StringIO())


# --- create_api_key ------------------------------------------------------------


def test_create_api_key_prints_the_key_last_and_it_authenticates(make_user) -> None:
    user = make_user(username="alice")
    out = run("create_api_key", "--username=alice", "--name=laptop")

    secret = out.strip().splitlines()[-1]
    assert secret.startswith("mlxm-")
    key = ApiKey.objects.get(user=user)
    assert key.name == "laptop"

    found = async_to_sync(api_key_authenticate)(secret)
    assert found is not None
    assert found.pk == key.pk
    assert found.user.username == "alice"


def test_create_api_key_for_a_missing_user_is_an_error() -> None:
    with pytest.raises(CommandError, match="no user 'ghost'"):
        run("create_api_key", "--username=ghost", "--name=laptop")
    assert not ApiKey.objects.exists()


def test_create_api_key_with_a_blank_name_is_an_error(make_user) -> None:
    make_user(username="alice")
    with pytest.raises(CommandError, match="needs a name"):
        run("create_api_key", "--username=alice", "--name=  ")
