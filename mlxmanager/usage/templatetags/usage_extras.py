from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.inclusion_tag("usage/budget_warnings.html", takes_context=True)
def budget_warnings(context: Any) -> dict[str, Any]:
    """Budgets at 80 % or more of their limit (an admin: everyone's; a member: their own)."""
    from mlxmanager.usage.selectors import budget_lines

    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"lines": []}
    return {"lines": [b for b in budget_lines(user) if b.warn]}
