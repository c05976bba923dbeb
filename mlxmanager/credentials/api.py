"""Cloud credentials in the management API (admins only). Secrets are write-only."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from ninja import Router, Schema, Status

from mlxmanager.credentials import selectors, services
from mlxmanager.credentials.models import Credential
from mlxmanager.permissions import require_admin

router = Router(tags=["credentials"])


class CredentialOut(Schema):
    id: int
    name: str
    provider: str
    base_url: str
    api_base: str
    key_id: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    last_tested_at: datetime | None
    last_test_ok: bool | None
    last_test_message: str
    has_secret: bool = True


class CredentialIn(Schema):
    name: str
    provider: str
    base_url: str = ""
    secret: str


class CredentialPatch(Schema):
    name: str | None = None
    base_url: str | None = None
    enabled: bool | None = None
    secret: str | None = None


@router.get("/", response=list[CredentialOut])
def list_credentials(request: HttpRequest) -> list[Credential]:
    require_admin(request)
    return list(selectors.credential_list())


@router.post("/", response={201: CredentialOut})
def create_credential(request: HttpRequest, body: CredentialIn) -> Status[Credential]:
    """Create; `secret` is stored encrypted and never returned."""
    require_admin(request)
    cred = services.credential_create(
        name=body.name, provider=body.provider, base_url=body.base_url, secret=body.secret, user=request.user
    )
    return Status(201, cred)


@router.patch("/{credential_id}", response=CredentialOut)
def update_credential(request: HttpRequest, credential_id: int, body: CredentialPatch) -> Credential:
    """Change fields; a `secret` replaces the stored one."""
    require_admin(request)
    return services.credential_update(
        credential_id=credential_id, user=request.user, **body.dict(exclude_unset=True)
    )


@router.delete("/{credential_id}", response={204: None})
def delete_credential(request: HttpRequest, credential_id: int) -> Status[None]:
    require_admin(request)
    services.credential_delete(credential_id=credential_id, user=request.user)
    return Status(204, None)


@router.post("/{credential_id}/test", response=CredentialOut)
def test_credential(request: HttpRequest, credential_id: int) -> Credential:
    """`GET /models` on the upstream with this key; see `last_test_ok` and `last_test_message`."""
    require_admin(request)
    return services.credential_test(credential_id=credential_id, user=request.user)
