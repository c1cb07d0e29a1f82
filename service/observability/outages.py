"""A background loop's failures as an operator needs them in the log while the database is down: a line when it
starts failing, then at most a line a minute saying how many more failures there were, and a line when it works
again. Logged at every pass, the heartbeat, the expiry pass, the bus and the webhook deliveries wrote several
lines a second between them, for as long as an outage lasted.

A loop that fails every other pass (a flapping connection) is held to the same pace: a failure within a minute
of the last line is counted for the next one, and an outage no line announced ends without one."""

from __future__ import annotations

import logging
import time

REPEAT_SECONDS = 60.0


class FailingLoop:
    def __init__(self, logger: logging.Logger, what: str, *, repeat_seconds: float = REPEAT_SECONDS) -> None:
        self._logger = logger
        self._what = what
        self._repeat_seconds = repeat_seconds
        self._since: float | None = None  # when the current outage began
        self._announced = False  # a line said the current outage's loop failed
        self._last_line: float | None = None
        self._unlogged = 0  # failures since the last line

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if self._last_line is not None and now - self._last_line < self._repeat_seconds:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more time(s) since the last line)" if self._unlogged else ""
        if self._announced:
            self._logger.warning("%s still failing: %s%s, for %.0f s now", self._what, reason, more, now - self._since)
        else:
            self._logger.warning("%s failed: %s%s", self._what, reason, more)
        self._announced, self._last_line, self._unlogged = True, now, 0

    def worked(self) -> None:
        if self._since is None:
            return
        if self._announced:
            now = time.monotonic()
            more = f" ({self._unlogged} more failure(s) since the last line)" if self._unlogged else ""
            self._logger.warning("%s works again, after failing for %.0f s%s", self._what, now - self._since, more)
            self._last_line, self._unlogged = now, 0
        self._since, self._announced = None, False
