"""A tenant's effective retention: its own policy, else the service-wide defaults from settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.config import MAX_RETENTION_DAYS, Settings
from service.errors import InvalidRequest, refuse_unknown_fields

MAX_DAYS = MAX_RETENTION_DAYS
FIELDS = ("responses_days", "conversations_idle_days")


@dataclass(frozen=True)
class Policy:
    responses_days: int | None
    conversations_idle_days: int | None
    source: str  # "tenant" (set through the admin API) or "default" (settings)

    @property
    def deletes_anything(self) -> bool:
        return self.responses_days is not None or self.conversations_idle_days is not None


def default_policy(settings: Settings) -> Policy:
    return Policy(settings.retention_responses_days, settings.retention_conversations_idle_days, "default")


def effective(row: Any, settings: Settings) -> Policy:
    if row is None:
        return default_policy(settings)
    return Policy(row.responses_days, row.conversations_idle_days, "tenant")


def parse_policy(body: dict[str, Any]) -> Policy:
    """Both fields are required (a whole-policy PUT): N whole days, at least 1, or null to keep forever."""
    values: dict[str, int | None] = {}
    refuse_unknown_fields(body, FIELDS)
    for field in FIELDS:
        if field not in body:
            raise InvalidRequest(
                f"{field} is required: a number of days (at least 1), or null to keep forever",
                param=field,
                code="missing_required_parameter",
            )
        value = body[field]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DAYS):
            raise InvalidRequest(
                f"{field} must be a whole number of days from 1 to {MAX_DAYS}, or null to keep forever",
                param=field,
                code="invalid_value",
            )
        values[field] = value
    return Policy(values["responses_days"], values["conversations_idle_days"], "tenant")


def policy_view(tenant: str, policy: Policy) -> dict[str, Any]:
    return {
        "object": "retention_policy",
        "tenant": tenant,
        "responses_days": policy.responses_days,
        "conversations_idle_days": policy.conversations_idle_days,
        "source": policy.source,
    }
