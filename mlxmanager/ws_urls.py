"""WebSocket routes."""

from django.urls import path

from inference.consumers import ChatConsumer
from mlxmanager.audit.consumers import AuditTailConsumer

websocket_urlpatterns = [
    path("v1/ws/chat", ChatConsumer.as_asgi()),
    path("audit/ws", AuditTailConsumer.as_asgi()),
]
