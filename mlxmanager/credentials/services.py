"""Writes for cloud credentials. Secrets go in encrypted and never come back out of here."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from mlxmanager.credentials import crypto
from mlxmanager.credentials.models import Credential
from mlxmanager.errors import Conflict, DomainError, NotFound

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_SECRET = 4096
TEST_TIMEOUT = 10.0


def _invalidate_routes() -> None:
    from mlxmanager.rules.selectors import invalidate_routes

    transaction.on_commit(invalidate_routes)


def _clean_name(name: str) -> str:
    name = (name or "").strip().lower()
    if not _NAME.match(name):
        raise DomainError(
            "a name is 1-64 lowercase letters, digits, '-' or '_' (it appears in rules and the audit log)",
            param="name",
        )
    if name == "local":
        raise DomainError("'local' is reserved for local profiles in rules", param="name")
    return name


def _clean_provider(provider: str) -> str:
    if provider not in Credential.Provider.values:
        raise DomainError(
            f"provider must be one of {', '.join(Credential.Provider.values)}", param="provider"
        )
    return provider


def _clean_base_url(provider: str, base_url: str) -> str:
    base_url = (base_url or "").strip().rstrip("/")
    if not base_url:
        if provider.endswith("_compatible"):
            raise DomainError("a compatible provider needs a base URL", param="base_url")
        return ""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DomainError("the base URL must be an http(s) URL", param="base_url")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise DomainError("put the key in the secret, not in the URL", param="base_url")
    if len(base_url) > 300:
        raise DomainError("the base URL is longer than 300 characters", param="base_url")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        raise DomainError("the base URL's port must be a number from 0 to 65535", param="base_url") from exc
    return base_url


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a base URL, the default port written out: where a secret goes."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def _clean_secret(secret: str) -> str:
    secret = (secret or "").strip()
    if len(secret) > MAX_SECRET:
        raise DomainError("the secret is too long", param="secret")
    if any(c in secret for c in "\r\n\0"):
        raise DomainError("the secret must be one line", param="secret")
    return secret


def credential_create(
    *,
    name: str,
    provider: str,
    secret: str,
    base_url: str = "",
    user: Any = None,
    now: datetime | None = None,
) -> Credential:
    name = _clean_name(name)
    provider = _clean_provider(provider)
    base_url = _clean_base_url(provider, base_url)
    token, kid = crypto.encrypt(_clean_secret(secret))
    now = now or timezone.now()
    try:
        with transaction.atomic():
            cred = Credential.objects.create(
                name=name,
                provider=provider,
                base_url=base_url,
                secret_jwe=token,
                key_id=kid,
                created_at=now,
                updated_at=now,
            )
            cred.log_action(
                "mlxmanager.credential.created",
                user=user,
                data={"provider": provider, "base_url": base_url or cred.api_base},
            )
    except IntegrityError as exc:
        raise Conflict(f"a credential named '{name}' already exists", param="name") from exc
    _invalidate_routes()
    return cred


def _get(credential_id: int) -> Credential:
    try:
        return Credential.objects.get(pk=credential_id)
    except Credential.DoesNotExist as exc:
        raise NotFound("no such credential") from exc


def credential_update(
    *,
    credential_id: int,
    user: Any = None,
    name: str | None = None,
    base_url: str | None = None,
    enabled: bool | None = None,
    secret: str | None = None,
    now: datetime | None = None,
) -> Credential:
    """Change fields; a new `secret` replaces the old one (which is never shown)."""
    with transaction.atomic():
        cred = Credential.objects.select_for_update().get(pk=_get(credential_id).pk)
        changed: dict[str, Any] = {}
        if name is not None and _clean_name(name) != cred.name:
            changed["name"] = [cred.name, _clean_name(name)]
            cred.name = _clean_name(name)
        if base_url is not None:
            clean = _clean_base_url(cred.provider, base_url)
            # The stored secret is sent to the base URL (Test, and every routed request): moving
            # it to another scheme, host or port needs the secret again, or an admin could send
            # a write-only secret to a server of theirs and read it there.
            new_api_base = Credential(provider=cred.provider, base_url=clean).api_base
            if secret is None and _origin(new_api_base) != _origin(cred.api_base):
                raise DomainError(
                    "enter the secret again to move this credential to another scheme, host or port "
                    "(the stored one is only sent where it was entered for)",
                    param="secret",
                )
            if clean != cred.base_url:
                changed["base_url"] = [cred.base_url, clean]
                cred.base_url = clean
        if enabled is not None and enabled != cred.enabled:
            changed["enabled"] = [cred.enabled, enabled]
            cred.enabled = enabled
        if secret is not None:
            cred.secret_jwe, cred.key_id = crypto.encrypt(_clean_secret(secret))
        if not changed and secret is None:
            return cred
        cred.updated_at = now or timezone.now()
        try:
            cred.save()
        except IntegrityError as exc:
            raise Conflict(f"a credential named '{cred.name}' already exists", param="name") from exc
        if changed:
            cred.log_action("mlxmanager.credential.changed", user=user, data=changed)
        if secret is not None:
            cred.log_action("mlxmanager.credential.secret_replaced", user=user, data={"secret": "(changed)"})
    _invalidate_routes()
    return cred


def credential_delete(*, credential_id: int, user: Any = None) -> None:
    cred = _get(credential_id)
    try:
        with transaction.atomic():
            cred.log_action("mlxmanager.credential.deleted", user=user, data={"provider": cred.provider})
            cred.delete()
    except ProtectedError as exc:
        rules = sorted({str(getattr(o, "rule", o)) for o in exc.protected_objects})
        raise Conflict(
            f"credential '{cred.name}' is used by routing rules ({', '.join(rules)}); change them first"
        ) from exc
    _invalidate_routes()


def scrub(text: str, secret: str) -> str:
    """`text` with the secret (and any long run of it) masked: upstream errors may echo keys."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "****")
    return text


def _test_request(cred: Credential, secret: str) -> httpx.Request:
    if cred.protocol == "anthropic":
        headers = {"x-api-key": secret, "anthropic-version": "2023-06-01"}
        url = cred.api_base + "/v1/models"
    else:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        url = cred.api_base + "/models"
    return httpx.Request("GET", url, headers=headers)


def credential_test(
    *, credential_id: int, user: Any = None, transport: httpx.BaseTransport | None = None
) -> Credential:
    """`GET /models` on the upstream with this key; the result is stored and audited."""
    cred = _get(credential_id)
    secret = crypto.decrypt(cred.secret_jwe)
    try:
        with httpx.Client(timeout=TEST_TIMEOUT, transport=transport) as client:
            resp = client.send(_test_request(cred, secret))
        if resp.status_code == 200:
            try:
                count = len(resp.json().get("data") or [])
                ok, message = True, f"OK: {count} models"
            except ValueError:
                ok, message = False, "HTTP 200 but the answer is not JSON: is the base URL right?"
        elif resp.status_code in (401, 403):
            ok, message = (
                False,
                f"HTTP {resp.status_code}: the key was refused; check the API key ({_error_message(resp)})",
            )
        else:
            ok, message = False, f"HTTP {resp.status_code}: {_error_message(resp)}"
    except httpx.TimeoutException:
        ok, message = (
            False,
            f"no answer from {cred.api_base} within {TEST_TIMEOUT:.0f} s; check the base URL and the network",
        )
    except httpx.ConnectError:
        ok, message = (
            False,
            f"could not connect to {cred.api_base}; check the base URL and that the server is running",
        )
    except httpx.HTTPError as exc:
        ok, message = (
            False,
            f"the request to {cred.api_base} failed ({type(exc).__name__}); check the base URL",
        )
    message = scrub(message, secret)[:300]
    Credential.objects.filter(pk=cred.pk).update(
        last_tested_at=timezone.now(), last_test_ok=ok, last_test_message=message
    )
    cred.refresh_from_db()
    cred.log_action("mlxmanager.credential.tested", user=user, data={"ok": ok, "result": message})
    return cred


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err.get("type") or "")[:200]
        return str(err or resp.reason_phrase)[:200]
    except ValueError:
        return resp.reason_phrase or "error"


def credentials_reencrypt(*, user: Any = None) -> int:
    """Seal every secret under the current key (after a rotation); returns how many changed."""
    current = crypto.keyring.current.kid
    n = 0
    with transaction.atomic():
        for cred in Credential.objects.select_for_update().exclude(key_id=current):
            cred.secret_jwe, cred.key_id = crypto.encrypt(crypto.decrypt(cred.secret_jwe))
            cred.save(update_fields=["secret_jwe", "key_id"])
            n += 1
        from mlxmanager.downloads.services import hub_token_reencrypt

        n += hub_token_reencrypt()
        from mlxmanager.sso.services import client_secret_reencrypt

        n += client_secret_reencrypt()
        if n:
            from mlxmanager.audit.services import log_action

            log_action(
                None,
                "mlxmanager.credential.reencrypted",
                user=user,
                object_type="credential",
                object_repr=f"{n} credentials",
                data={"count": n, "key_id": current},
            )
    _invalidate_routes()
    return n
