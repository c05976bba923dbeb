"""ASGI entry point: HTTP through Django, WebSockets through Channels, lifespan here.

`/v1/` (the gateway's API-key traffic) goes to its own Django handler whose middleware chain
is `MLXM_GATEWAY_MIDDLEWARE`: no sessions, CSRF, auth, messages or page middleware, each of
which would cost two thread hops per request (`docs/benchmarks.md`, gateway overhead).
All HTTP passes `RequestLimits` first (`mlxmanager/request_limits.py`): body size and read
time, and `/v1/` without any API key, refused before Django reads the body.
Traces (`mlxmanager/tracing.py`) are set up here, once per process, when `OTEL_*` asks.
"""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

from mlxmanager import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlxmanager.settings")
if not settings.configured:
    # A web server process (started by `serve`, which names the file, or on its own): it logs
    # to <data dir>/logs/web.log too (inference/logsetup.py).
    os.environ.setdefault("MLXM_LOG_PROCESS", "web")
# OpenTelemetry traces, if the OTEL_* variables ask (docs/operations.md): before the middleware
# chains are built, since the tracing middleware leaves them while tracing is off.
tracing.setup()
# Initialise Django before importing anything that touches models (consumers, routing).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from mlxmanager.gateway_asgi import GatewayASGIHandler, lifespan, split_http  # noqa: E402
from mlxmanager.request_limits import RequestLimits  # noqa: E402
from mlxmanager.security import SameOriginValidator  # noqa: E402
from mlxmanager.ws_urls import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": RequestLimits(split_http(gateway=GatewayASGIHandler(), default=django_asgi_app)),
        # The full origin (scheme, host, port) against the request's own or a trusted one.
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        "lifespan": lifespan,
    }
)
