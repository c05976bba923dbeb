from tests.gateway_fixtures import admin, fake_upstream, routed_gateway  # noqa: F401
from tests.mlxmanager.people import _fast_hashing_and_no_flusher, boss, boss_client, member, member_client  # noqa: F401
