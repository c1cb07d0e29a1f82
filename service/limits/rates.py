"""Request rates per tenant and per key: a token bucket per name, kept in this process.

Across processes the budget is split: each of LIMIT_PROCESSES processes allows rate/LIMIT_PROCESSES, so the sum
holds without a database write per request (a tenant whose requests all reach one process gets its share there,
not the whole; the README says so)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

_PRUNE_AT = 10_000  # names kept before full (idle) buckets are dropped


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """`rate` tokens a second, up to `burst`; `take` spends one or says how long until one is there."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str, now: float | None = None, *, spend: bool = True) -> float:
        """0 when the request may go; else the seconds until it could. `spend=False` only looks."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[name] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            if spend:
                bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def give_back(self, name: str) -> None:
        """Returns a token `take` spent (a reservation that turned out not to count)."""
        bucket = self._buckets.get(name)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1.0)

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {name: b for name, b in self._buckets.items() if now - b.at < full_after}


def per_process(total: float, processes: int) -> float:
    return total / max(processes, 1)


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
