"""Reads for credentials. `upstream_config` is the only place a secret is decrypted for use."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import QuerySet

from mlxmanager.credentials import crypto
from mlxmanager.credentials.models import Credential


@dataclass(frozen=True)
class UpstreamConfig:
    """What the gateway needs to call a provider. The secret never shows in repr or logs."""

    id: int
    name: str
    provider: str
    protocol: str
    base_url: str
    secret: str = field(repr=False)

    def __str__(self) -> str:
        return self.name


def credential_list() -> QuerySet[Credential]:
    return Credential.objects.all().order_by("name")


def upstream_config(cred: Credential) -> UpstreamConfig:
    return UpstreamConfig(
        id=cred.pk,
        name=cred.name,
        provider=cred.provider,
        protocol=cred.protocol,
        base_url=cred.api_base,
        secret=crypto.decrypt(cred.secret_jwe),
    )
