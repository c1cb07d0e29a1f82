"""Which models exist and how large their context windows are, from OpenRouter's `GET /models`.

Read lazily (the first turn or listing that needs it), kept per process, and refreshed in the background once
older than MODEL_CATALOG_REFRESH_SECONDS, so that no turn waits on it once it has been read. A failed read is
logged and tried again later; until one succeeds, models have no known window and their turns go upstream as
they are (OpenRouter's own context error is then mapped to OpenAI's). MODEL_CONTEXT_WINDOWS pins a window.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("service.context.catalog")

# How long the first turn of a process waits for the catalog's first read.
FIRST_READ_WAIT_SECONDS = 5.0
# After a failed read, how long the catalog waits before a turn may try again.
_RETRY_AFTER_FAILURE_SECONDS = 30.0


@dataclass(frozen=True)
class ModelWindow:
    context_length: int
    max_completion_tokens: int | None = None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _window_of(entry: Mapping[str, Any]) -> ModelWindow | None:
    provider = entry.get("top_provider")
    top: Mapping[str, Any] = provider if isinstance(provider, dict) else {}
    context = _positive_int(entry.get("context_length")) or _positive_int(top.get("context_length"))
    if context is None:
        return None
    return ModelWindow(context, _positive_int(top.get("max_completion_tokens")))


class ModelCatalog:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[Any]],
        *,
        overrides: Mapping[str, int],
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._overrides = dict(overrides)
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._entries: dict[str, dict[str, Any]] = {}
        self._windows: dict[str, ModelWindow] = {}
        self._loaded_at: float | None = None
        self._failed_at: float | None = None
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    @property
    def ever_read(self) -> bool:
        """Whether OpenRouter's catalog has been read once: until then, what it lists is unknown, not empty."""
        return self._loaded_at is not None

    async def window(self, model: str) -> ModelWindow | None:
        """The model's window, or None when it is not known (then nothing is assumed about it)."""
        await self._ensure_loaded()
        known = self._windows.get(model) or self._windows.get(model.split(":", 1)[0])
        pinned = self._overrides.get(model)
        if pinned is not None:
            return ModelWindow(pinned, known.max_completion_tokens if known else None)
        return known

    async def models(self) -> list[dict[str, Any]]:
        """Every model OpenRouter lists, as it lists them (plus pinned ones it does not)."""
        await self._ensure_loaded()
        entries = dict(self._entries)
        for model, size in self._overrides.items():
            entries.setdefault(model, {"id": model, "context_length": size})
        return list(entries.values())

    async def model(self, model: str) -> dict[str, Any] | None:
        await self._ensure_loaded()
        entry = self._entries.get(model)
        if entry is None and model in self._overrides:
            return {"id": model, "context_length": self._overrides[model]}
        return entry

    async def _ensure_loaded(self) -> None:
        """The first read is awaited by whoever needs it first, for at most FIRST_READ_WAIT_SECONDS (then the
        turn goes on as for a model with no known window, and the read finishes in the background); every later
        read, a refresh or another try after a failure, runs in the background while the catalog serves what it
        has."""
        now = self._clock()
        if self._loaded_at is None and self._failed_at is None:
            self._refresh_soon()
            if self._refreshing is not None:
                await asyncio.wait({self._refreshing}, timeout=FIRST_READ_WAIT_SECONDS)
            return
        due = (
            now - self._loaded_at > self._refresh_seconds
            if self._loaded_at is not None
            else now - (self._failed_at or now) >= _RETRY_AFTER_FAILURE_SECONDS
        )
        if due:
            self._refresh_soon()

    def _refresh_soon(self) -> None:
        if self._refreshing is None:
            # In a context of its own: the read serves every turn, not the request that happened to start it,
            # whose id its log lines would otherwise carry (service/observability/record.py).
            self._refreshing = asyncio.get_running_loop().create_task(
                self._refresh_in_background(), context=contextvars.Context()
            )

    async def _refresh_in_background(self) -> None:
        try:
            async with self._lock:
                await self._load()
        finally:
            self._refreshing = None

    async def _load(self) -> None:
        try:
            payload = await self._fetch()
        except Exception as exc:
            self._failed_at = self._clock()
            logger.warning("could not read the model catalog (%s); windows stay as they were", exc)
            return
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            self._failed_at = self._clock()
            logger.warning("the model catalog has no data list; windows stay as they were")
            return
        entries = {e["id"]: e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)}
        windows = {}
        for model, entry in entries.items():
            window = _window_of(entry)
            if window is not None:
                windows[model] = window
        self._entries, self._windows = entries, windows
        self._loaded_at = self._clock()
        self._failed_at = None
        logger.info("model catalog read: %d models, %d with a context window", len(entries), len(windows))
