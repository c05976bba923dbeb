"""WebSocket routes."""

from django.urls import path

from inference.consumers import ChatConsumer

websocket_urlpatterns = [
    path("v1/ws/chat", ChatConsumer.as_asgi()),
]
