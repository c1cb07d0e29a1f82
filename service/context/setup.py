"""Building the context-window service from the settings, for the application's lifespan."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.context.catalog import ModelCatalog
from service.context.ledger import TokenLedger
from service.context.sealing import Sealer
from service.context.service import ContextWindows
from service.observability.tracing import untraced
from service.upstream.client import OpenRouterClient


def build_context_windows(settings: Settings, upstream: OpenRouterClient, engine: AsyncEngine) -> ContextWindows:
    async def read_models() -> Any:
        # Not traced: the read serves every turn, and runs on its own in the background (a root span otherwise).
        with untraced():
            return await upstream.get_json("models")

    catalog = ModelCatalog(
        read_models,
        overrides=dict(settings.model_context_windows),
        refresh_seconds=settings.model_catalog_refresh_seconds,
    )
    # Token counts of threads take about as much memory as their histories' texts: the same budget.
    return ContextWindows(
        catalog,
        TokenLedger(settings.history_cache_mb * 1024 * 1024),
        Sealer(engine, settings.compaction_key, settings.previous_compaction_keys),
        compaction_model=settings.compaction_model,
    )
