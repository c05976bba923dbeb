"""Writes for routing rules. Every change is audited and drops the gateway's route cache."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from mlxmanager.credentials.models import Credential
from mlxmanager.errors import Conflict, DomainError, NotFound
from mlxmanager.rules import matching
from mlxmanager.rules.models import Rule, RuleTarget
from mlxmanager.rules.selectors import invalidate_routes

MAX_TARGETS = 8
MAX_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TargetSpec:
    """A local profile (`profile`) or a credential (`credential`, by name) + upstream `model`."""

    profile: str = ""
    credential: str = ""
    model: str = ""

    @classmethod
    def parse(cls, line: str) -> TargetSpec:
        """`local:<profile>`, `<credential>:<upstream model>` or `<credential>` (same model name)."""
        line = line.strip()
        head, sep, tail = line.partition(":")
        if head.strip() == "local":
            return cls(profile=tail.strip())
        return cls(credential=head.strip(), model=tail.strip() if sep else "")

    def label(self) -> str:
        if self.profile:
            return f"local:{self.profile}"
        return f"{self.credential}:{self.model}" if self.model else self.credential


def parse_targets(text: str) -> list[TargetSpec]:
    return [TargetSpec.parse(line) for line in (text or "").splitlines() if line.strip()]


def _clean_targets(specs: list[TargetSpec]) -> list[dict[str, Any]]:
    if not specs:
        raise DomainError("a rule needs at least one target", param="targets")
    if len(specs) > MAX_TARGETS:
        raise DomainError(f"at most {MAX_TARGETS} targets (a primary and its fallbacks)", param="targets")
    out = []
    names = {
        c.name: c for c in Credential.objects.filter(name__in=[s.credential for s in specs if s.credential])
    }
    for i, s in enumerate(specs):
        where = f"targets.{i}"
        if bool(s.profile) == bool(s.credential):
            raise DomainError("each target is either a local profile or a credential", param=where)
        if len(s.model) > 256 or len(s.profile) > 100:
            raise DomainError("the name is too long", param=where)
        if s.credential:
            cred = names.get(s.credential)
            if cred is None:
                raise DomainError(f"no credential named '{s.credential[:64]}'", param=where)
            out.append({"credential": cred, "upstream_model": s.model, "profile_name": ""})
        else:
            out.append({"credential": None, "upstream_model": "", "profile_name": s.profile})
    return out


def _clean_timeout(timeout_s: float | None) -> float | None:
    if timeout_s is None:
        return None
    if not math.isfinite(timeout_s) or not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise DomainError(f"the timeout must be between 0 and {MAX_TIMEOUT_S:.0f} seconds", param="timeout_s")
    return float(timeout_s)


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise DomainError("a rule needs a name of at most 100 characters", param="name")
    return name


def _set_targets(rule: Rule, targets: list[dict[str, Any]]) -> None:
    rule.targets.all().delete()
    RuleTarget.objects.bulk_create([RuleTarget(rule=rule, position=i, **t) for i, t in enumerate(targets)])


def _summary(rule: Rule, targets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if targets is None:
        labels = [t.label for t in rule.targets.select_related("credential")]
    else:
        labels = [
            f"local:{t['profile_name']}"
            if not t["credential"]
            else (
                f"{t['credential'].name}:{t['upstream_model']}"
                if t["upstream_model"]
                else t["credential"].name
            )
            for t in targets
        ]
    return {
        "match_type": rule.match_type,
        "pattern": rule.pattern,
        "targets": labels,
        "timeout_s": rule.timeout_s,
        "enabled": rule.enabled,
    }


def rule_create(
    *,
    name: str,
    match_type: str,
    pattern: str,
    targets: list[TargetSpec],
    timeout_s: float | None = None,
    enabled: bool = True,
    user: Any = None,
    now: datetime | None = None,
) -> Rule:
    """A new rule, applied after the existing ones (reorder to change that), but before the
    built-in cloud-names rule while that one is last."""
    name = _clean_name(name)
    pattern = matching.validate(match_type, pattern)
    cleaned = _clean_targets(targets)
    timeout_s = _clean_timeout(timeout_s)
    now = now or timezone.now()
    try:
        with transaction.atomic():
            last = Rule.objects.aggregate(m=Max("position"))["m"]
            position = 0 if last is None else last + 1
            catch_all = _cloud_names_rule_last()
            if catch_all is not None:  # the built-in rule stays last: rules written later win
                position = catch_all.position
                Rule.objects.filter(pk=catch_all.pk).update(position=position + 1)
            rule = Rule.objects.create(
                name=name,
                match_type=match_type,
                pattern=pattern,
                timeout_s=timeout_s,
                enabled=enabled,
                position=position,
                created_at=now,
                updated_at=now,
            )
            _set_targets(rule, cleaned)
            rule.log_action("mlxmanager.rule.created", user=user, data=_summary(rule, cleaned))
    except IntegrityError as exc:
        raise Conflict(f"a rule named '{name}' already exists", param="name") from exc
    transaction.on_commit(invalidate_routes)
    return rule


def _get(rule_id: int) -> Rule:
    try:
        return Rule.objects.get(pk=rule_id)
    except Rule.DoesNotExist as exc:
        raise NotFound("no such rule") from exc


def rule_get(*, rule_id: int) -> Rule:
    """One rule, for its edit form."""
    return _get(rule_id)


_UNSET: Any = object()


def rule_update(
    *,
    rule_id: int,
    user: Any = None,
    name: str | None = None,
    match_type: str | None = None,
    pattern: str | None = None,
    targets: list[TargetSpec] | None = None,
    timeout_s: float | None = _UNSET,
    enabled: bool | None = None,
    now: datetime | None = None,
) -> Rule:
    with transaction.atomic():
        rule = _get(rule_id)
        before = _summary(rule) | {"name": rule.name}
        if name is not None:
            rule.name = _clean_name(name)
        if match_type is not None or pattern is not None:
            mt = match_type if match_type is not None else rule.match_type
            rule.pattern = matching.validate(mt, pattern if pattern is not None else rule.pattern)
            rule.match_type = mt
        if timeout_s is not _UNSET:
            rule.timeout_s = _clean_timeout(timeout_s)
        if enabled is not None:
            rule.enabled = enabled
        cleaned = _clean_targets(targets) if targets is not None else None
        rule.updated_at = now or timezone.now()
        try:
            with transaction.atomic():
                rule.save()
        except IntegrityError as exc:
            raise Conflict(f"a rule named '{rule.name}' already exists", param="name") from exc
        if cleaned is not None:
            _set_targets(rule, cleaned)
        after = _summary(rule) | {"name": rule.name}
        diff = {k: [before[k], after[k]] for k in after if before[k] != after[k]}
        if diff:
            rule.log_action("mlxmanager.rule.changed", user=user, data=diff)
    transaction.on_commit(invalidate_routes)
    return rule


def rule_delete(*, rule_id: int, user: Any = None) -> None:
    with transaction.atomic():
        rule = _get(rule_id)
        rule.log_action("mlxmanager.rule.deleted", user=user, data=_summary(rule))
        rule.delete()
    transaction.on_commit(invalidate_routes)


def rule_reorder(*, ids: list[int], user: Any = None) -> list[Rule]:
    """Apply rules in the order of `ids` (every rule, each once)."""
    with transaction.atomic():
        rules = {r.pk: r for r in Rule.objects.select_for_update()}
        if sorted(ids) != sorted(rules):
            raise DomainError("list every rule id exactly once", param="ids")
        before = [r.name for r in sorted(rules.values(), key=lambda r: (r.position, r.pk))]
        for pos, pk in enumerate(ids):
            rules[pk].position = pos
        Rule.objects.bulk_update(rules.values(), ["position"])
        after = [rules[pk].name for pk in ids]
        if before != after:
            from mlxmanager.audit.services import log_action

            log_action(None, "mlxmanager.rule.reordered", user=user, object_type="rule",
                       object_repr="rule order", data={"order": [before, after]})  # fmt: skip
    transaction.on_commit(invalidate_routes)
    return [rules[pk] for pk in ids]


def rule_move(*, rule_id: int, offset: int, user: Any = None) -> list[Rule]:
    """Move one rule up (-1) or down (+1) in the order."""
    ids = list(Rule.objects.order_by("position", "id").values_list("id", flat=True))
    if rule_id not in ids:
        raise NotFound("no such rule")
    i = ids.index(rule_id)
    j = max(0, min(len(ids) - 1, i + offset))
    ids.insert(j, ids.pop(i))
    return rule_reorder(ids=ids, user=user)


# ---- the built-in rule for cloud model names ------------------------------------------------------

CLOUD_NAMES_RULE = "Cloud model names → default model"
CLOUD_NAMES_PATTERN = "claude-*"
# Seconds the default model may take to start answering: loading it cold and reading a coding
# agent's long system prompt takes far longer than a cloud API's first byte.
CLOUD_NAMES_TIMEOUT_S = 300.0
_CLOUD_NAMES_MARK = "_cloud_names_rule_created"  # a SiteSetting row: created once, never again


def cloud_names_rule_ensure() -> Rule | None:
    """On a fresh install (`serve` calls this at start), a rule sending `claude-*` (what Claude
    Code asks for) to the default local model, so those clients work with no hand-written rule.
    An ordinary rule afterwards: edit its pattern (a regex such as `claude-.*|gpt-4o.*` takes
    more cloud names), put a cloud credential first in its targets, disable or delete it.
    Made once: a deleted rule stays deleted. Returns the rule when it was created now."""
    from mlxmanager.sitesettings.models import SiteSetting
    from mlxmanager.sitesettings.selectors import DEFAULT_TARGET

    if SiteSetting.objects.filter(key=_CLOUD_NAMES_MARK).exists():
        return None
    try:
        with transaction.atomic():
            mark = SiteSetting.objects.create(key=_CLOUD_NAMES_MARK, value=0)
            if Rule.objects.filter(name=CLOUD_NAMES_RULE).exists():
                return None
            rule = rule_create(
                name=CLOUD_NAMES_RULE,
                match_type=Rule.Match.GLOB,
                pattern=CLOUD_NAMES_PATTERN,
                targets=[TargetSpec(profile=DEFAULT_TARGET)],
                timeout_s=CLOUD_NAMES_TIMEOUT_S,
            )
            mark.value = rule.pk
            mark.save(update_fields=["value"])
    except IntegrityError:  # another process made it at the same moment
        return None
    return rule


def _cloud_names_rule_last() -> Rule | None:
    """The built-in cloud-names rule when it is the last rule (it catches `claude-*`, so a rule
    for one such name written after it would never apply)."""
    from mlxmanager.sitesettings.models import SiteSetting

    mark = SiteSetting.objects.filter(key=_CLOUD_NAMES_MARK).values_list("value", flat=True).first()
    if not isinstance(mark, int):
        return None
    last = Rule.objects.order_by("-position", "-id").first()
    return last if last is not None and last.pk == mark else None
