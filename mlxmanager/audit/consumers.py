"""`/audit/ws`: the live tail. Admins only (session auth); rows arrive as rendered <tr>s."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.template.loader import render_to_string

from mlxmanager.audit.recorder import LIVE_GROUP
from mlxmanager.permissions import is_admin

CLOSE_FORBIDDEN = 4403


def render_rows(rows: list[dict[str, Any]]) -> str:
    html = []
    for row in reversed(rows):  # the newest first, as in the table
        r = dict(row)
        if isinstance(r.get("created_at"), str):
            r["created_at"] = datetime.fromisoformat(r["created_at"])
        html.append(render_to_string("audit/log.html#row", {"r": r}))
    return "".join(html)


class AuditTailConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        if not is_admin(self.scope.get("user")):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.channel_layer.group_add(LIVE_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.channel_layer is not None:
            await self.channel_layer.group_discard(LIVE_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The tail is one-way; anything a client sends is ignored."""

    async def audit_rows(self, event: dict[str, Any]) -> None:
        rows = event.get("rows") or []
        await self.send_json({"type": "rows", "count": len(rows), "html": render_rows(rows), "rows": rows})
