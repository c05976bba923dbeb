"""Login throttling through the real login page (Django's test client, real database)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client

from mlxmanager.accounts import forms

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _setup(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    get_user_model().objects.create_user(username="alice", password="right-password-123")


def login(client: Client, password: str, username: str = "alice", ip: str = "10.0.0.1"):  # type: ignore[no-untyped-def]
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_five_failures_lock_the_pair_even_with_the_right_password() -> None:
    c = Client()
    for _ in range(forms.MAX_FAILURES):
        resp = login(c, "wrong")
        assert resp.status_code == 200 and "Too many" not in resp.content.decode()
    locked = login(c, "right-password-123")
    assert locked.status_code == 200
    assert "Too many failed attempts for this account from your address. Try again in 15 minutes." in (
        locked.content.decode()
    )
    # Another address, or another username from this one, is not locked.
    assert login(Client(), "right-password-123", ip="10.0.0.2").status_code == 302
    assert "Too many" not in login(c, "wrong", username="bob").content.decode()


def test_a_success_clears_the_count() -> None:
    c = Client()
    for _ in range(forms.MAX_FAILURES - 1):
        login(c, "wrong")
    assert login(c, "right-password-123").status_code == 302
    c.logout()
    for _ in range(forms.MAX_FAILURES - 1):
        login(c, "wrong")
    assert login(c, "right-password-123").status_code == 302


def test_a_look_alike_spelling_shares_the_lock() -> None:
    """Django signs in the NFKC-normalised username, so `ａlice` (full-width a) and `ALICE`
    are the same account as `alice`: they must count against, and be refused by, one lock."""
    c = Client()
    for _ in range(forms.MAX_FAILURES):
        login(c, "wrong")
    for spelling in ("\uff41lice", "ALICE", " alice ", "Alice"):
        resp = login(c, "right-password-123", username=spelling)
        assert resp.status_code == 200, spelling
        assert "Too many failed attempts" in resp.content.decode(), spelling


def test_failures_under_other_spellings_count_too() -> None:
    c = Client()
    spellings = ["\uff41lice", "ALICE", "alice", "\uff21LICE", "Alice"]
    for spelling in spellings[: forms.MAX_FAILURES]:
        login(c, "wrong", username=spelling)
    assert "Too many failed attempts" in login(c, "right-password-123").content.decode()


def test_concurrent_attempts_never_check_more_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong passwords sent at once: the count is taken atomically before the password is
    checked, so at most MAX_FAILURES of them reach the password check."""
    import threading

    from django.contrib.auth.forms import AuthenticationForm
    from django.test import RequestFactory

    checked = 0
    lock = threading.Lock()
    barrier = threading.Barrier(20)
    original = AuthenticationForm.clean

    def counting_clean(self):  # type: ignore[no-untyped-def]
        nonlocal checked
        with lock:
            checked += 1
        return original(self)

    monkeypatch.setattr(AuthenticationForm, "clean", counting_clean)
    results: list[bool] = []

    def attempt() -> None:
        request = RequestFactory().post("/login/", REMOTE_ADDR="10.0.0.9")
        form = forms.ThrottledLoginForm(request, data={"username": "alice", "password": "wrong"})
        barrier.wait()
        results.append(form.is_valid())

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [False] * 20
    assert checked <= forms.MAX_FAILURES
