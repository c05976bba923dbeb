"""WebSocket routes. The live chat socket (/v1/ws/chat) arrives with the playground."""

from typing import Any

websocket_urlpatterns: list[Any] = []
