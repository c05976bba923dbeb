"""A small OpenID Connect provider for the tests, on 127.0.0.1 in a thread.

Standards-following where the gateway looks: a discovery document, a JWKS with an RS256 key
(joserfc), `/authorize` for the authorization code flow that auto-approves `idp.user` (no
login form), and `/token` that authenticates the client (client_secret_basic or _post),
checks the code's redirect URI and its PKCE verifier (S256, AuthLib's
`create_s256_code_challenge`) and returns an RS256-signed ID token with the nonce.

Knobs for the refusals the tests provoke: `audience` (an ID token for another client),
`expired` (an ID token whose `exp` has passed), `state_suffix` (the state sent back is not
the one received, as if tampered on the way), `issuer_override` (the discovery document
names another issuer), `trailing_slash` (the issuer spelled with a final "/").
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import RSAKey


@dataclass
class IdpUser:
    sub: str
    email: str
    preferred_username: str
    groups: list[str] = field(default_factory=list)
    email_verified: bool = True


@dataclass
class Idp:
    client_id: str = "mlx-manager"
    client_secret: str = field(default_factory=lambda: "idp-secret-" + secrets.token_hex(8))
    user: IdpUser = field(default_factory=lambda: IdpUser("u-1", "alice@example.com", "alice"))
    audience: str | None = None
    expired: bool = False
    state_suffix: str = ""
    issuer_override: str | None = None
    trailing_slash: bool = False  # the issuer spelled with a final "/" (as Authentik does)
    # Registered redirect URIs, by prefix (Django's test client calls itself "testserver").
    redirect_prefixes: tuple[str, ...] = ("http://127.0.0.1:", "http://localhost:", "http://testserver/")
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    _codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key-1", "use": "sig", "alg": "RS256"})

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Idp:
        idp = self

        class Handler(_Handler):
            provider = idp

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="test-idp").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def reset(self) -> None:
        """Back to a well-behaved provider."""
        self.audience = None
        self.expired = False
        self.state_suffix = ""
        self.issuer_override = None
        self.trailing_slash = False

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the provider first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def issuer(self) -> str:
        """The issuer as the provider spells it in its discovery document and ID tokens."""
        return self.url + ("/" if self.trailing_slash else "")

    # -- documents ------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer_override or self.issuer,
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "jwks_uri": self.url + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "email", "email_verified", "preferred_username", "groups"],
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def id_token(self, *, nonce: str, user: IdpUser) -> str:
        now = int(time.time())
        exp = now - 3600 if self.expired else now + 300
        claims = {
            "iss": self.issuer,
            "sub": user.sub,
            "aud": self.audience or self.client_id,
            "iat": now - 3700 if self.expired else now,
            "exp": exp,
            "nonce": nonce,
            "email": user.email,
            "email_verified": user.email_verified,
            "preferred_username": user.preferred_username,
            "groups": list(user.groups),
        }
        return jwt.encode({"alg": "RS256", "kid": "test-key-1"}, claims, self.key)


class _Handler(BaseHTTPRequestHandler):
    provider: Idp

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(
        self,
        status: int,
        body: Any,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        idp = self.provider
        if parts.path == "/.well-known/openid-configuration":
            self._send(200, idp.discovery())
        elif parts.path == "/jwks":
            self._send(200, idp.jwks())
        elif parts.path == "/authorize":
            self._authorize({k: v[0] for k, v in parse_qs(parts.query).items()})
        else:
            self._send(404, {"error": "not_found"})

    def _authorize(self, q: dict[str, str]) -> None:
        idp = self.provider
        idp.authorize_requests.append(q)
        if q.get("client_id") != idp.client_id:
            return self._send(400, "unknown client_id", content_type="text/plain")
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri.startswith(idp.redirect_prefixes):
            return self._send(400, "redirect_uri not registered", content_type="text/plain")
        if q.get("response_type") != "code" or "openid" not in q.get("scope", "").split():
            return self._send(400, "only the code flow with the openid scope", content_type="text/plain")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return self._send(400, "PKCE with S256 is required", content_type="text/plain")
        code = secrets.token_urlsafe(24)
        idp._codes[code] = {
            "redirect_uri": redirect_uri,
            "code_challenge": q["code_challenge"],
            "nonce": q.get("nonce", ""),
            "user": idp.user,
        }
        back = {"code": code, "state": q.get("state", "") + idp.state_suffix}
        sep = "&" if "?" in redirect_uri else "?"
        self._send(
            302, "", content_type="text/plain", headers={"Location": redirect_uri + sep + urlencode(back)}
        )

    def do_POST(self) -> None:  # noqa: N802
        idp = self.provider
        if urlsplit(self.path).path != "/token":
            return self._send(404, {"error": "not_found"})
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            from urllib.parse import unquote

            client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            client_id, client_secret = unquote(client_id), unquote(client_secret)
        idp.token_requests.append({**form, "client_id": client_id, "auth": "basic" if auth else "post"})
        if client_id != idp.client_id or client_secret != idp.client_secret:
            return self._send(401, {"error": "invalid_client"})
        if form.get("grant_type") != "authorization_code":
            return self._send(400, {"error": "unsupported_grant_type"})
        grant = idp._codes.pop(form.get("code", ""), None)
        if grant is None:
            return self._send(400, {"error": "invalid_grant", "error_description": "unknown or used code"})
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return self._send(400, {"error": "invalid_grant", "error_description": "redirect_uri differs"})
        verifier = form.get("code_verifier", "")
        if not verifier or create_s256_code_challenge(verifier) != grant["code_challenge"]:
            return self._send(
                400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
            )
        self._send(
            200,
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "openid email profile",
                "id_token": idp.id_token(nonce=grant["nonce"], user=grant["user"]),
            },
        )
