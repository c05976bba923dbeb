"""Live team-gateway fixtures (a fake upstream, a routed gateway, an admin session)."""

from tests.gateway_fixtures import admin, fake_upstream, routed_gateway  # noqa: F401
