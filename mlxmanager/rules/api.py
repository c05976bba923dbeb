"""Routing rules in the management API (admins only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema, Status

from mlxmanager.permissions import require_admin
from mlxmanager.rules import selectors, services
from mlxmanager.rules.models import Rule

router = Router(tags=["routing rules"])


class TargetIO(Schema):
    """A local profile (`profile`) or a credential name (`credential`) and upstream `model`."""

    profile: str = ""
    credential: str = ""
    model: str = ""


class RuleOut(Schema):
    id: int
    name: str
    match_type: str
    pattern: str
    position: int
    enabled: bool
    timeout_s: float | None
    targets: list[TargetIO]
    created_at: datetime
    updated_at: datetime


class RuleIn(Schema):
    name: str
    match_type: str = "exact"
    pattern: str
    targets: list[TargetIO]
    timeout_s: float | None = None
    enabled: bool = True


class RulePatch(Schema):
    name: str | None = None
    match_type: str | None = None
    pattern: str | None = None
    targets: list[TargetIO] | None = None
    timeout_s: float | None = None
    enabled: bool | None = None


class OrderIn(Schema):
    ids: list[int]


def _out(rule: Rule) -> dict[str, Any]:
    return {
        **{
            f: getattr(rule, f)
            for f in (
                "id",
                "name",
                "match_type",
                "pattern",
                "position",
                "enabled",
                "timeout_s",
                "created_at",
                "updated_at",
            )
        },  # fmt: skip
        "targets": [
            {
                "profile": t.profile_name,
                "credential": t.credential.name if t.credential else "",
                "model": t.upstream_model,
            }
            for t in rule.targets.select_related("credential").order_by("position")
        ],
    }


def _specs(targets: list[TargetIO]) -> list[services.TargetSpec]:
    return [services.TargetSpec(profile=t.profile, credential=t.credential, model=t.model) for t in targets]


@router.get("/", response=list[RuleOut])
def list_rules(request: HttpRequest) -> list[dict[str, Any]]:
    """In the order they apply."""
    require_admin(request)
    return [_out(r) for r in selectors.rule_list()]


@router.post("/", response={201: RuleOut})
def create_rule(request: HttpRequest, body: RuleIn) -> Status[dict[str, Any]]:
    require_admin(request)
    rule = services.rule_create(
        name=body.name,
        match_type=body.match_type,
        pattern=body.pattern,
        targets=_specs(body.targets),
        timeout_s=body.timeout_s,
        enabled=body.enabled,
        user=request.user,
    )
    return Status(201, _out(rule))


@router.post("/order", response=list[RuleOut])
def reorder_rules(request: HttpRequest, body: OrderIn) -> list[dict[str, Any]]:
    """Set the order rules apply in: every rule id, once."""
    require_admin(request)
    return [_out(r) for r in services.rule_reorder(ids=body.ids, user=request.user)]


class MatchTarget(Schema):
    label: str
    ok: bool
    note: str


class MatchOut(Schema):
    model: str
    rule: str | None
    rule_id: int | None = None
    timeout_s: float | None = None
    targets: list[MatchTarget]
    note: str = ""


@router.get("/match", response=MatchOut)
def match_rule(request: HttpRequest, model: str) -> dict[str, Any]:
    """Which rule would serve `model`, and its backends in the order they'd be tried."""
    require_admin(request)
    return selectors.explain(model[:256])


@router.patch("/{rule_id}", response=RuleOut)
def update_rule(request: HttpRequest, rule_id: int, body: RulePatch) -> dict[str, Any]:
    require_admin(request)
    fields = body.dict(exclude_unset=True)
    if "targets" in fields:
        fields["targets"] = _specs(body.targets or [])
    return _out(services.rule_update(rule_id=rule_id, user=request.user, **fields))


@router.delete("/{rule_id}", response={204: None})
def delete_rule(request: HttpRequest, rule_id: int) -> Status[None]:
    require_admin(request)
    services.rule_delete(rule_id=rule_id, user=request.user)
    return Status(204, None)
