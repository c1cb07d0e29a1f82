"""The delivery loop each process runs: claim due outbox rows (SKIP LOCKED, so processes share the work), send
each signed event in a task of its own with no database connection held, record the attempt and schedule the
next one.

At-least-once: a row is marked delivered only after a 2xx; a process that dies mid-send leaves its claim to
expire (WEBHOOK_CLAIM_SECONDS) and the event is sent again with the same `webhook-id`, which receivers use to drop
duplicates. The body is built from the stored row, so every attempt sends the same bytes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

import httpx
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.errors import first_line
from service.observability.metrics import WEBHOOK_ATTEMPTS
from service.observability.outages import FailingLoop
from service.webhooks import repository
from service.webhooks.addresses import AddressRefused, check_url_form
from service.webhooks.connect import Resolver, stopped_resolving, webhook_client
from service.webhooks.signing import signed_headers

logger = logging.getLogger("service.webhooks")

BATCH = 20
# Sends under way in one process at once, to one endpoint, and for one tenant: a receiver that hangs holds its
# endpoint's share for WEBHOOK_TIMEOUT_SECONDS at a time (its other deliveries wait for it), a tenant whose
# receivers all hang holds its own share, and the rest stays free for the others.
MAX_IN_FLIGHT = 100
MAX_IN_FLIGHT_PER_ENDPOINT = 20
MAX_IN_FLIGHT_PER_TENANT = 40
MAX_ERROR_LENGTH = 500
_GATHER_ENDED_SENDS_SECONDS = 0.005


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
        self._resolver = Resolver()
        self.client = webhook_client(
            timeout=settings.webhook_timeout_seconds,
            allow_private=settings.webhook_allow_private_addresses,
            resolve=self._resolver.resolve,
        )
        self._sending: dict[asyncio.Task[None], tuple[Any, float]] = {}  # each send under way: its row, its start
        self._per_endpoint: Counter[str] = Counter()
        self._per_tenant: Counter[str] = Counter()
        self._finished = asyncio.Event()  # set whenever a send ends: its endpoint may have more due

    async def _send(self, row: Any) -> tuple[int | None, str | None]:
        """One attempt: its status code, and its error (None for a 2xx). The whole attempt, from resolving the
        host to the answer's status line and headers, takes at most WEBHOOK_TIMEOUT_SECONDS however slowly the
        receiver answers (httpx's own timeout bounds each read, not their sum). The answer's body is never read.
        The URL's form is checked here; its host's addresses where the connection is made (connect.py)."""
        body = event_body(row)
        timeout = self.settings.webhook_timeout_seconds
        stopped_resolving.set(None)
        try:
            async with asyncio.timeout(timeout):
                check_url_form(row.url, allow_private=self.settings.webhook_allow_private_addresses)
                headers = signed_headers(row.secret, row.event_id, int(time.time()), body)
                async with self.client.stream("POST", row.url, content=body, headers=headers) as answer:
                    status_code = answer.status_code
        except AddressRefused as exc:
            return None, f"refused: {exc}"
        except TimeoutError:
            if (host := stopped_resolving.get()) is not None:
                return None, f"cannot resolve {host} within {timeout:g} s (WEBHOOK_TIMEOUT_SECONDS)"
            return None, f"no answer within {timeout:g} s (WEBHOOK_TIMEOUT_SECONDS)"
        except httpx.HTTPError as exc:
            return None, _described(exc)
        if 200 <= status_code < 300:
            return status_code, None
        return status_code, f"HTTP {status_code}"

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
        duration_ms = int((time.monotonic() - started) * 1000)
        async with self.engine.begin() as conn:
            recorded = await repository.record_attempt(
                conn,
                pk=row.pk,
                claim=row.locked_until,
                ok=error is None,
                status_code=status_code,
                error=error,
                duration_ms=duration_ms,
                retry_base=self.settings.webhook_retry_base_seconds,
                retry_window=self.settings.webhook_retry_hours * 3600,
            )
        if recorded == repository.GONE:
            logger.info("webhook %s: deleted while it was sent (with its response or its endpoint)", row.event_id)
            return
        if recorded == repository.CLAIM_LOST:
            logger.info("webhook %s: its claim ran out while it was sent; another attempt took it over", row.event_id)
            return
        WEBHOOK_ATTEMPTS.labels({"pending": "retrying"}.get(recorded, recorded)).inc()
        if recorded == "failed":
            logger.warning(
                "webhook %s to endpoint %s of tenant %s gave up after %d attempts: %s",
                row.event_id,
                row.endpoint_id,
                row.tenant,
                row.attempts + 1,
                error,
            )

    async def _deliver_logged(self, row: Any) -> None:
        try:
            await self._deliver(row)
        except Exception as exc:
            # The attempt could not be recorded (the database went away): the row keeps its claim until it runs
            # out, and is sent again then. The driver's first line only: a statement's parameters (the
            # receiver's error, which may quote its URL and any token in it) stay out of the log.
            logger.warning("webhook %s attempt not recorded: %s: %s", row.event_id, type(exc).__name__, first_line(exc))

    def _sent(self, task: asyncio.Task[None]) -> None:
        row, _ = self._sending.pop(task)
        for shares, name in ((self._per_endpoint, row.endpoint_id), (self._per_tenant, row.tenant_id)):
            shares[name] -= 1
            if shares[name] <= 0:
                del shares[name]
        self._finished.set()

    async def start_due(self) -> int:
        """Claims due deliveries, as many as there is room for (BATCH at most), and sends each in a task of its
        own: no pass waits for a send. An endpoint or a tenant with its share under way is passed over by the
        claim, and what a claim took past a share is given back at once. Returns how many it claimed."""
        room = min(BATCH, MAX_IN_FLIGHT - len(self._sending))
        if room <= 0:
            return 0
        busy_endpoints = [name for name, count in self._per_endpoint.items() if count >= MAX_IN_FLIGHT_PER_ENDPOINT]
        busy_tenants = [name for name, count in self._per_tenant.items() if count >= MAX_IN_FLIGHT_PER_TENANT]
        async with self.engine.begin() as conn:
            rows = await repository.claim_due(
                conn,
                limit=room,
                busy_endpoints=busy_endpoints,
                busy_tenants=busy_tenants,
                lease=self.settings.webhook_claim_seconds,
            )
        extra = []
        for row in rows:
            if (
                self._per_endpoint[row.endpoint_id] >= MAX_IN_FLIGHT_PER_ENDPOINT
                or self._per_tenant[row.tenant_id] >= MAX_IN_FLIGHT_PER_TENANT
            ):
                extra.append((row.pk, row.locked_until))
                continue
            task = asyncio.create_task(self._deliver_logged(row), name=f"webhook-{row.event_id}")
            self._sending[task] = (row, time.monotonic())
            self._per_endpoint[row.endpoint_id] += 1
            self._per_tenant[row.tenant_id] += 1
            task.add_done_callback(self._sent)
        if extra:
            async with self.engine.begin() as conn:
                await repository.give_back(conn, extra)
        return len(rows)

    async def run_forever(self) -> None:
        """Claims what is due every WEBHOOK_POLL_SECONDS, and again as soon as a send ends (an endpoint with a
        backlog gets its next events at once, not a poll later), or at once while claims come back full."""
        failing = FailingLoop(logger, "webhook delivery pass")
        while True:
            self._finished.clear()
            try:
                claimed = await self.start_due()
            except Exception as exc:
                failing.failed(type(exc).__name__)
                await asyncio.sleep(self.settings.webhook_poll_seconds)
                continue
            failing.worked()
            if claimed == BATCH:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.webhook_poll_seconds):
                    await self._finished.wait()
                # Woken by a send that ended: the sends ending with it are made room for by the same claim,
                # rather than by one claim each.
                await asyncio.sleep(_GATHER_ENDED_SENDS_SECONDS)

    async def aclose(self) -> None:
        """Stops the sends under way and gives their deliveries back (another process, or the next start, sends
        them at once, with the same webhook-id, rather than once their claims run out), then the HTTP client and
        the resolver's threads."""
        sending = dict(self._sending)
        for task in sending:
            task.cancel()
        await asyncio.gather(*sending, return_exceptions=True)
        now = time.monotonic()
        stopped = [(row.pk, row.locked_until, int((now - started) * 1000)) for row, started in sending.values()]
        if stopped:
            try:
                async with self.engine.begin() as conn:
                    await repository.release_claims(conn, stopped)
            except Exception as exc:
                logger.warning("webhook claims not given back at shutdown (they run out): %s", type(exc).__name__)
        await self.client.aclose()
        self._resolver.close()
