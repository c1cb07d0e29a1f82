"""The bodies of the admin retention routes. Days are whole numbers from 1; null keeps forever."""

from __future__ import annotations

from typing import Literal

import msgspec


class RetentionPolicyBody(msgspec.Struct, forbid_unknown_fields=True):
    responses_days: int | None = None
    conversations_idle_days: int | None = None


class RetentionPolicy(msgspec.Struct):
    object: Literal["retention_policy"]
    tenant: str
    responses_days: int | None
    conversations_idle_days: int | None
    source: Literal["tenant", "default"]


class RetentionPreview(msgspec.Struct):
    object: Literal["retention.preview"]
    tenant: str
    responses: int
    conversations: int
    items: int


class RetentionRun(msgspec.Struct):
    object: Literal["retention.run"]
    responses: int
    conversations: int
    items: int
    tenants: int
    seconds: float
    error: str | None


class RetentionDefaults(msgspec.Struct):
    responses_days: int | None
    conversations_idle_days: int | None


class RetentionState(msgspec.Struct):
    object: Literal["retention"]
    defaults: RetentionDefaults
    interval_seconds: float
    running: bool
    last_run_at: int | None
    last_run: RetentionRun | None
