"""A background loop's failures as an operator needs them in the log while the database is down: the first at
once, then a line a minute saying how many more there were, and a line when the loop works again. Logged at
every pass, the heartbeat, the expiry sweep, the bus and the webhook deliveries wrote several lines a second
between them, for as long as the outage lasted."""

from __future__ import annotations

import logging
import time

REPEAT_SECONDS = 60.0


class FailingLoop:
    def __init__(self, logger: logging.Logger, what: str, *, repeat_seconds: float = REPEAT_SECONDS) -> None:
        self._logger = logger
        self._what = what
        self._repeat_seconds = repeat_seconds
        self._since: float | None = None  # when the failures began
        self._last_line = 0.0
        self._unlogged = 0

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        if self._since is None:
            self._since = self._last_line = now
            self._logger.warning("%s failed: %s", self._what, reason)
            return
        self._unlogged += 1
        if now - self._last_line >= self._repeat_seconds:
            self._logger.warning(
                "%s still failing: %s (%d more time(s) since the last line, for %.0f s now)",
                self._what,
                reason,
                self._unlogged,
                now - self._since,
            )
            self._last_line, self._unlogged = now, 0

    def worked(self) -> None:
        if self._since is None:
            return
        self._logger.warning("%s works again, after failing for %.0f s", self._what, time.monotonic() - self._since)
        self._since, self._unlogged = None, 0
