"""The delivery loop each process runs: claim due outbox rows (SKIP LOCKED, so processes share the work), send
each signed event with no database connection held, record the attempt and schedule the next one.

At-least-once: a row is marked delivered only after a 2xx; a process that dies mid-send leaves its claim to
expire (LEASE_SECONDS) and the event is sent again with the same `webhook-id`, which receivers use to drop
duplicates. The body is built from the stored row, so every attempt sends the same bytes."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.observability.metrics import WEBHOOK_ATTEMPTS
from service.webhooks import repository
from service.webhooks.addresses import AddressRefused, check_destination
from service.webhooks.signing import signed_headers

logger = logging.getLogger("service.webhooks")

LEASE_SECONDS = 60
BATCH = 20
SEND_TIMEOUT = 10.0
MAX_ERROR_LENGTH = 500


def _described(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH] if str(exc) else type(exc).__name__


def event_body(row: Any) -> bytes:
    """OpenAI's event shape: {id, object: "event", type, created_at, data: {id}}."""
    event = {
        "id": row.event_id,
        "object": "event",
        "type": row.event_type,
        "created_at": int(row.created_at.timestamp()),
        "data": {"id": row.response_id},
    }
    return msgspec.json.encode(event)


class WebhookDeliverer:
    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.client = httpx.AsyncClient(timeout=SEND_TIMEOUT, follow_redirects=False)

    async def _send(self, row: Any) -> tuple[int | None, str | None]:
        body = event_body(row)
        try:
            await check_destination(row.url, allow_private=self.settings.webhook_allow_private_addresses)
            headers = signed_headers(row.secret, row.event_id, int(time.time()), body)
            answer = await self.client.post(row.url, content=body, headers=headers)
        except AddressRefused as exc:
            return None, f"refused: {exc}"
        except httpx.HTTPError as exc:
            return None, _described(exc)
        if 200 <= answer.status_code < 300:
            return answer.status_code, None
        return answer.status_code, f"HTTP {answer.status_code}"

    async def _deliver(self, row: Any) -> None:
        started = time.monotonic()
        try:
            status_code, error = await self._send(row)
        except Exception as exc:
            # Whatever else one row's send raises (an endpoint stored before its URL's form was refused, a
            # secret that does not decode) is that row's failed attempt: retried, then given up on after the
            # retry window like any failure, never left pending with no attempt while it is claimed again.
            logger.warning("webhook %s could not be sent: %s", row.event_id, type(exc).__name__)
            status_code, error = None, _described(exc)
        async with self.engine.begin() as conn:
            state = await repository.record_attempt(
                conn,
                pk=row.pk,
                ok=error is None,
                status_code=status_code,
                error=error,
                duration_ms=int((time.monotonic() - started) * 1000),
                retry_base=self.settings.webhook_retry_base_seconds,
                retry_window=self.settings.webhook_retry_hours * 3600,
            )
        if state is None:
            logger.info("webhook %s: deleted while it was sent (with its response or its endpoint)", row.event_id)
            return
        WEBHOOK_ATTEMPTS.labels({"pending": "retrying"}.get(state, state)).inc()
        if state == "failed":
            logger.warning(
                "webhook %s to endpoint gave up after %d attempts: %s", row.event_id, row.attempts + 1, error
            )

    async def deliver_due(self) -> int:
        """One pass: every due delivery, BATCH at a time, sent concurrently. Returns how many were attempted."""
        async with self.engine.begin() as conn:
            rows = await repository.claim_due(conn, limit=BATCH, lease=LEASE_SECONDS)
        outcomes = await asyncio.gather(*(self._deliver(row) for row in rows), return_exceptions=True)
        # A row whose attempt could not be recorded (the database went away) keeps its claim until the lease
        # ends and is sent again then; the other rows of the pass go on.
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, Exception):
                logger.warning("webhook %s attempt not recorded: %s", row.event_id, type(outcome).__name__)
            elif isinstance(outcome, BaseException):
                raise outcome
        return len(rows)

    async def run_forever(self) -> None:
        while True:
            try:
                if await self.deliver_due() == BATCH:
                    continue
            except Exception as exc:
                logger.warning("webhook delivery pass failed: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.webhook_poll_seconds)

    async def aclose(self) -> None:
        await self.client.aclose()
