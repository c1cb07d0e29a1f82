"""The limits one process applies, built from the settings: request rates per tenant and per key, and turns in
flight per tenant (also its share of the upstream pool) and per key. Each budget is divided by the number of
processes that share it (LIMIT_PROCESSES, default WORKERS), so together they hold the configured total."""

from __future__ import annotations

import math

from service.config import Settings
from service.errors import ServiceError
from service.keys.service import Principal
from service.limits.rates import TokenBuckets, per_process, retry_after_header
from service.limits.turns import TurnGate, TurnSlot


def _buckets(rate: float, burst: float, processes: int) -> TokenBuckets | None:
    if rate <= 0:
        return None
    return TokenBuckets(per_process(rate, processes), per_process(max(burst, rate), processes))


def _cap(total: int, processes: int) -> int:
    return 0 if total <= 0 else max(1, math.ceil(total / processes))


def tenant_turn_cap(settings: Settings) -> int:
    """Turns in flight one tenant may have in this process: its own cap, and its share of the upstream pool
    (which is per process already)."""
    caps = [_cap(settings.tenant_turns_in_flight, settings.processes_sharing_limits)]
    if 0 < settings.upstream_tenant_share < 1:
        caps.append(max(1, math.floor(settings.upstream_tenant_share * settings.upstream_max_connections)))
    caps = [cap for cap in caps if cap > 0]
    return min(caps) if caps else 0


class Limits:
    def __init__(self, settings: Settings) -> None:
        processes = settings.processes_sharing_limits
        self.tenant_rates = _buckets(settings.tenant_requests_per_second, settings.tenant_request_burst, processes)
        self.key_rates = _buckets(settings.key_requests_per_second, settings.key_request_burst, processes)
        self.turns = TurnGate(tenant_turn_cap(settings), _cap(settings.key_turns_in_flight, processes))

    def check_request(self, principal: Principal) -> None:
        """A tenant's request beyond its rate (or its key's) gets 429 with the seconds until it may retry."""
        if self.tenant_rates is not None:
            wait = self.tenant_rates.take(principal.tenant_id)
            if wait:
                raise _rate_exceeded("this tenant", self.tenant_rates, wait)
        if self.key_rates is not None and principal.key_id is not None:
            wait = self.key_rates.take(principal.key_id)
            if wait:
                raise _rate_exceeded("this API key", self.key_rates, wait)

    def refuse_beyond_rate(self, tenant_id: str) -> None:
        """The tenant's rate checked without spending it (the route's own check spends it), for work that comes
        before the route: a request the route would refuse is refused before it costs a database write."""
        if self.tenant_rates is not None:
            wait = self.tenant_rates.take(tenant_id, spend=False)
            if wait:
                raise _rate_exceeded("this tenant", self.tenant_rates, wait)

    def admit_turn(self, principal: Principal) -> TurnSlot:
        return self.turns.admit(principal.tenant_id, principal.key_id)


def _rate_exceeded(whose: str, buckets: TokenBuckets, wait: float) -> ServiceError:
    return ServiceError(
        f"Rate limit reached for {whose}: {buckets.rate:g} requests per second here (bursts of "
        f"{buckets.burst:g}); retry after {wait:.2f} s",
        status_code=429,
        code="rate_limit_exceeded",
        headers=retry_after_header(wait),
    )
