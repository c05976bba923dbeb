"""Hub and storage failures as domain errors (the /api handler turns them into problem+json)."""

from __future__ import annotations

from mlxmanager.errors import DomainError


class HubUnavailable(DomainError):
    """The hub could not be reached or answered with a server error."""

    status = 502
    code = "hub_unavailable"


class HubAccessDenied(DomainError):
    """A gated or private model, or a token the hub refused."""

    status = 403
    code = "hub_access_denied"


class InsufficientStorage(DomainError):
    status = 507
    code = "insufficient_storage"
