"""Single sign-on with OIDC through AuthLib's Django client: the provider's discovery
document, the authorization code flow with PKCE (S256), state and nonce, and the ID token
checked against the provider's JWKS (RS256 signature, iss, aud = client id, exp, nonce).
Users are created at their first sign-in and get their role from a group claim."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client import MismatchingStateError
from authlib.integrations.django_client import OAuth
from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from joserfc.errors import BadSignatureError, ClaimError, ExpiredTokenError, JoseError

from mlxmanager.errors import DomainError
from mlxmanager.sso.models import OidcConfig, OidcIdentity
from mlxmanager.sso.selectors import PASSWORD_LOGIN_CHOICES, OidcSettings, current, split_domains

SCOPE = "openid email profile"
SIGNING_ALG = "RS256"
DISCOVERY_TIMEOUT = 10.0
LEEWAY_SECONDS = 60
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class SsoRefused(Exception):
    """A sign-in that is refused; `message` is shown to the person on a clear page."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# --- discovery ------------------------------------------------------------------------------


def _clean_issuer(issuer: str) -> str:
    issuer = (issuer or "").strip().rstrip("/")
    try:
        parts = urlsplit(issuer)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        raise DomainError("the issuer is not a valid URL", param="issuer") from exc
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DomainError(
            "the issuer must be an http(s) URL, e.g. https://idp.example.com/realms/team", param="issuer"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise DomainError("the issuer URL has no query, fragment or credentials", param="issuer")
    if len(issuer) > 300:
        raise DomainError("the issuer is longer than 300 characters", param="issuer")
    return issuer


def discover(issuer: str) -> dict[str, Any]:
    """Fetch `<issuer>/.well-known/openid-configuration` and check that it fits what the
    sign-in needs. A DomainError with a clear message otherwise."""
    issuer = _clean_issuer(issuer)
    url = issuer + "/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=DISCOVERY_TIMEOUT, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise DomainError(f"could not fetch {url}: {exc.__class__.__name__}", param="issuer") from exc
    if response.status_code != 200:
        raise DomainError(
            f"{url} answered HTTP {response.status_code}, not a discovery document", param="issuer"
        )
    try:
        meta = response.json()
    except ValueError as exc:
        raise DomainError(f"{url} did not return JSON", param="issuer") from exc
    if not isinstance(meta, dict):
        raise DomainError(f"{url} did not return a JSON object", param="issuer")
    if str(meta.get("issuer", "")).rstrip("/") != issuer:
        raise DomainError(
            f"the discovery document names the issuer {meta.get('issuer')!r}, not {issuer!r}", param="issuer"
        )
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(meta.get(key), str) or not meta[key].startswith(("http://", "https://")):
            raise DomainError(f"the discovery document has no {key}", param="issuer")
    algs = meta.get("id_token_signing_alg_values_supported") or []
    if SIGNING_ALG not in algs:
        raise DomainError(f"the provider does not sign ID tokens with {SIGNING_ALG}", param="issuer")
    pkce = meta.get("code_challenge_methods_supported")
    if pkce is not None and "S256" not in pkce:
        raise DomainError("the provider does not support PKCE with S256", param="issuer")
    types = meta.get("response_types_supported")
    if types is not None and "code" not in types:
        raise DomainError("the provider does not support the authorization code flow", param="issuer")
    return meta


# --- settings -------------------------------------------------------------------------------


def config_save(
    *,
    user: Any,
    enabled: bool,
    provider_name: str,
    issuer: str,
    client_id: str,
    client_secret: str = "",
    allowed_domains: str = "",
    groups_claim: str = "groups",
    admin_group: str = "",
    password_login: str = "all",  # noqa: S107 - not a password
    check_discovery: bool = True,
) -> OidcConfig:
    """Validate and save the SSO settings (the one row). A blank `client_secret` keeps the
    secret in force. With `enabled`, the issuer's discovery document is fetched and checked."""
    for param, value in (("provider_name", provider_name), ("issuer", issuer), ("client_id", client_id),
                         ("allowed_domains", allowed_domains), ("groups_claim", groups_claim),
                         ("admin_group", admin_group)):  # fmt: skip
        if any(ord(c) < 32 or ord(c) == 127 for c in value or ""):
            raise DomainError(f"{param.replace('_', ' ')} must not contain control characters", param=param)
    provider_name = (provider_name or "").strip() or "SSO"
    if len(provider_name) > 60:
        raise DomainError("the provider name is at most 60 characters", param="provider_name")
    client_id = (client_id or "").strip()
    if len(client_id) > 200 or any(c.isspace() for c in client_id):
        raise DomainError("the client id is at most 200 characters without spaces", param="client_id")
    client_secret = (client_secret or "").strip()
    if len(client_secret) > 4096 or any(c in client_secret for c in "\r\n\0"):
        raise DomainError(
            "the client secret must be one line of at most 4,096 characters", param="client_secret"
        )
    domains = split_domains(allowed_domains or "")
    for d in domains:
        if not _DOMAIN.match(d):
            raise DomainError(f"{d!r} is not an e-mail domain such as example.com", param="allowed_domains")
    groups_claim = (groups_claim or "").strip() or "groups"
    if len(groups_claim) > 100 or any(c.isspace() for c in groups_claim):
        raise DomainError("the groups claim is a claim name such as groups or roles", param="groups_claim")
    admin_group = (admin_group or "").strip()
    if len(admin_group) > 200:
        raise DomainError("the admin group is at most 200 characters", param="admin_group")
    if password_login not in PASSWORD_LOGIN_CHOICES:
        raise DomainError(
            "password sign-in is for everyone (all) or admins only (admins)", param="password_login"
        )
    issuer = (issuer or "").strip().rstrip("/")
    if enabled:
        if not client_id:
            raise DomainError("SSO needs the client id registered at the provider", param="client_id")
        issuer = _clean_issuer(issuer)
        if check_discovery:
            discover(issuer)
    elif issuer:
        issuer = _clean_issuer(issuer)
    if not enabled and password_login == "admins":  # noqa: S105 - not a password
        raise DomainError(
            "turn SSO on before turning password sign-in off for members", param="password_login"
        )

    before = current()
    secret = client_secret or before.client_secret
    from mlxmanager.credentials import crypto

    token, kid = crypto.encrypt(secret) if secret else ("", "")
    with transaction.atomic():
        row = OidcConfig.objects.select_for_update().filter(pk=1).first()
        created = row is None
        row = row or OidcConfig(pk=1)
        old = {f: getattr(row, f) for f in _FIELDS} if not created else {}
        row.enabled = enabled
        row.provider_name = provider_name
        row.issuer = issuer
        row.client_id = client_id
        row.secret_jwe, row.key_id = token, kid
        row.allowed_domains = domains
        row.groups_claim = groups_claim
        row.admin_group = admin_group
        row.password_login = password_login
        row.updated_at = timezone.now()
        row.save()
        new = {f: getattr(row, f) for f in _FIELDS}
        data: dict[str, Any] = {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}
        if client_secret:
            data["secret"] = "(changed)"  # noqa: S105 - not a password
        row.log_action("mlxmanager.sso.changed", user=user, data=data)
    return row


_FIELDS = ("enabled", "provider_name", "issuer", "client_id", "allowed_domains", "groups_claim",
           "admin_group", "password_login")  # fmt: skip


def client_secret_reencrypt() -> int:
    """Seal the stored client secret under the current key (credentials_rotate_key); 1 if it
    was re-sealed, else 0. Call inside a transaction."""
    from mlxmanager.credentials import crypto

    row = OidcConfig.objects.select_for_update().filter(pk=1).exclude(secret_jwe="").first()
    if row is None or row.key_id == crypto.keyring.current.kid:
        return 0
    row.secret_jwe, row.key_id = crypto.encrypt(crypto.decrypt(row.secret_jwe))
    row.save(update_fields=["secret_jwe", "key_id"])
    return 1


# --- the sign-in ----------------------------------------------------------------------------


def client_for(settings: OidcSettings) -> Any:
    """An AuthLib Django client for the provider (discovery document loaded lazily)."""
    oauth = OAuth()
    return oauth.register(
        name="mlxm_sso",
        client_id=settings.client_id,
        client_secret=settings.client_secret or None,
        server_metadata_url=settings.metadata_url,
        client_kwargs={"scope": SCOPE, "code_challenge_method": "S256", "default_timeout": DISCOVERY_TIMEOUT},
    )


def _check_issuer(meta: dict[str, Any], settings: OidcSettings) -> None:
    if str(meta.get("issuer", "")).rstrip("/") != settings.issuer.rstrip("/"):
        raise SsoRefused(
            f"{settings.provider_name}'s discovery document names another issuer than the one configured. "
            "An admin should check the SSO settings.",
            status=502,
        )


def begin(request: HttpRequest, redirect_uri: str) -> HttpResponse:
    """Redirect to the provider's authorization endpoint (state, nonce and PKCE verifier go in
    the session)."""
    settings = current()
    if not settings.active:
        raise SsoRefused("Single sign-on is not configured here. Sign in with your password.", status=404)
    client = client_for(settings)
    try:
        _check_issuer(client.load_server_metadata(), settings)
        return client.authorize_redirect(request, redirect_uri)  # type: ignore[no-any-return]
    except (httpx.HTTPError, OSError, ValueError, AuthlibBaseError) as exc:
        raise SsoRefused(
            f"{settings.provider_name} could not be reached ({exc.__class__.__name__}).", status=502
        ) from exc
    except Exception as exc:  # requests' errors (AuthLib's HTTP client) and the like
        if exc.__class__.__module__.startswith("requests"):
            raise SsoRefused(f"{settings.provider_name} could not be reached.", status=502) from exc
        raise


def finish(request: HttpRequest) -> Any:
    """Handle the provider's redirect back: check the state, swap the code (with the PKCE
    verifier) for tokens, verify the ID token, and return the local user to log in."""
    settings = current()
    if not settings.active:
        raise SsoRefused("Single sign-on is not configured here. Sign in with your password.", status=404)
    if request.GET.get("error"):
        detail = request.GET.get("error_description") or request.GET.get("error")
        raise SsoRefused(f"{settings.provider_name} refused the sign-in: {str(detail)[:200]}", status=403)
    if not request.GET.get("code") or not request.GET.get("state"):
        raise SsoRefused(
            "This sign-in link is incomplete (no code or state). Start again from the login page."
        )
    client = client_for(settings)
    claims_options: dict[str, dict[str, Any]] = {
        "iss": {"essential": True, "values": [settings.issuer]},
        "aud": {"essential": True, "values": [settings.client_id]},
        "exp": {"essential": True},
        "sub": {"essential": True},
    }
    try:
        meta = client.load_server_metadata()
        _check_issuer(meta, settings)
        # The ID token's `iss` is the discovery document's spelling (Authentik's ends in "/").
        claims_options["iss"]["values"] = [meta["issuer"]]
        # Only RS256: whatever else the discovery document lists (never "none").
        meta["id_token_signing_alg_values_supported"] = [SIGNING_ALG]
        token = client.authorize_access_token(request, claims_options=claims_options, leeway=LEEWAY_SECONDS)
    except MismatchingStateError as exc:
        raise SsoRefused(
            "This sign-in does not match the one this browser started (the state differs or has expired). "
            "Start again from the login page."
        ) from exc
    except ExpiredTokenError as exc:
        raise SsoRefused(
            f"{settings.provider_name} sent an expired ID token. Check the clocks and try again."
        ) from exc
    except ClaimError as exc:
        what = {
            "aud": "it was issued for another application (audience)",
            "iss": "it was issued by another provider (issuer)",
            "nonce": "it does not belong to this sign-in (nonce)",
            "azp": "it was issued for another application (authorized party)",
        }.get(exc.claim, f"its {exc.claim!r} claim is wrong")
        raise SsoRefused(f"The ID token from {settings.provider_name} was refused: {what}.") from exc
    except BadSignatureError as exc:
        raise SsoRefused(f"The ID token's signature does not match {settings.provider_name}'s keys.") from exc
    except JoseError as exc:
        raise SsoRefused(
            f"The ID token from {settings.provider_name} could not be verified ({exc.error})."
        ) from exc
    except AuthlibBaseError as exc:
        raise SsoRefused(f"{settings.provider_name} refused the sign-in ({exc.error}).") from exc
    except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
        raise SsoRefused(
            f"The answer from {settings.provider_name} could not be used ({exc.__class__.__name__}).",
            status=502,
        ) from exc
    except Exception as exc:
        if exc.__class__.__module__.startswith("requests"):
            raise SsoRefused(f"{settings.provider_name} could not be reached.", status=502) from exc
        raise
    claims = token.get("userinfo")
    if not claims:
        raise SsoRefused(
            f"{settings.provider_name} sent no ID token. Is the openid scope allowed for this client?"
        )
    return user_for_claims(dict(claims), settings)


def _groups(claims: dict[str, Any], name: str) -> list[str]:
    value: Any = claims
    for part in name.split("."):  # nested claims, e.g. realm_access.roles (Keycloak)
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def role_for(claims: dict[str, Any], settings: OidcSettings) -> str | None:
    """ "admin" or "member" from the groups claim; None when no admin group is configured."""
    if not settings.admin_group:
        return None
    return "admin" if settings.admin_group in _groups(claims, settings.groups_claim) else "member"


def _check_domain(claims: dict[str, Any], settings: OidcSettings) -> str:
    email = str(claims.get("email") or "").strip()
    if not settings.allowed_domains:
        return email
    if "@" not in email:
        raise SsoRefused(
            f"{settings.provider_name} sent no e-mail address, and only some domains may sign in here.",
            status=403,
        )
    if claims.get("email_verified") is False:
        raise SsoRefused(
            f"Your e-mail address {email} is not verified at {settings.provider_name}.", status=403
        )
    domain = email.rsplit("@", 1)[1].lower()
    if domain not in settings.allowed_domains:
        raise SsoRefused(
            f"Accounts at {domain} may not sign in here (allowed: {', '.join(settings.allowed_domains)}).",
            status=403,
        )
    return email


def _username_for(claims: dict[str, Any]) -> str:
    base = str(claims.get("preferred_username") or claims.get("email") or f"sso-{claims['sub']}")
    base = "".join(c for c in base if not c.isspace())[:140] or f"sso-{str(claims['sub'])[:20]}"
    User = get_user_model()
    name, n = base, 1
    while User.objects.filter(username=name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def user_for_claims(claims: dict[str, Any], settings: OidcSettings) -> Any:
    """The local user for verified ID token claims: found by (issuer, sub), or created. The
    role follows the admin group when one is configured (the last active admin is kept)."""
    subject = str(claims.get("sub") or "")
    if not subject:
        raise SsoRefused(f"The ID token from {settings.provider_name} names no subject.")
    email = _check_domain(claims, settings)
    role = role_for(claims, settings)
    User = get_user_model()
    with transaction.atomic():
        ident = (
            OidcIdentity.objects.select_related("user")
            .filter(issuer=settings.issuer, subject=subject)
            .first()
        )
        if ident is None:
            user = User(username=_username_for(claims), email=email[:254], is_staff=role == "admin")
            user.first_name = str(claims.get("given_name") or "")[:150]
            user.last_name = str(claims.get("family_name") or "")[:150]
            user.set_unusable_password()
            user.save()
            ident = OidcIdentity.objects.create(
                user=user, issuer=settings.issuer, subject=subject, email=email[:254]
            )
        user = ident.user
        if not user.is_active:
            raise SsoRefused("Your account here is deactivated. Ask an admin to reactivate it.", status=403)
        if role is not None and (role == "admin") != user.is_staff:
            keep_last_admin = (
                role == "member"
                and User.objects.filter(is_staff=True, is_active=True).exclude(pk=user.pk).count() == 0
            )
            if not keep_last_admin:
                user.is_staff = role == "admin"
                user.save(update_fields=["is_staff"])
        ident.last_login_at = timezone.now()
        ident.email = email[:254] or ident.email
        ident.save(update_fields=["last_login_at", "email"])
    return user


def password_login_allowed(user: Any) -> bool:
    """Whether `user` may sign in with a password: always for admins; members only while
    password sign-in is for everyone or SSO is not in use."""
    settings = current()
    if getattr(user, "is_staff", False) or not settings.active:
        return True
    return settings.password_login == "all"  # noqa: S105 - not a password
