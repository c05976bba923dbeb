import pytest

from mlxmanager.accounts.tokens import InvalidToken, token_mint, token_verify
from mlxmanager.errors import DomainError

pytestmark = pytest.mark.django_db  # tokens carry the user's generation (a query)


def test_round_trip() -> None:
    assert token_verify(token_mint(user_id=7, purpose="ws-chat"), purpose="ws-chat") == 7


def test_scoped_to_one_purpose() -> None:
    with pytest.raises(InvalidToken):
        token_verify(token_mint(user_id=7, purpose="sse"), purpose="ws-chat")


def test_expires() -> None:
    token = token_mint(user_id=7, purpose="ws-chat", ttl=60, now=1_000_000)
    assert token_verify(token, purpose="ws-chat", now=1_000_030) == 7
    with pytest.raises(InvalidToken):
        token_verify(token, purpose="ws-chat", now=1_000_100)


@pytest.mark.parametrize("token", ["", "x", "a.b.c", "x" * 5000])
def test_garbage(token: str) -> None:
    with pytest.raises(InvalidToken):
        token_verify(token, purpose="ws-chat")


def test_tampered_signature() -> None:
    token = token_mint(user_id=7, purpose="ws-chat")
    with pytest.raises(InvalidToken):
        token_verify(token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"), purpose="ws-chat")


def test_unknown_purpose_refused() -> None:
    with pytest.raises(DomainError):
        token_mint(user_id=1, purpose="admin")
