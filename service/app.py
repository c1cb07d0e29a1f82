"""The application factory. The lifespan owns the engine, the upstream client, the cluster node and the background
jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar
from opentelemetry.trace import TracerProvider

from service.admin.routes import AdminController, AdminKeyController
from service.cluster.node import ClusterNode
from service.config import Settings
from service.console.routes import ConsoleController
from service.context.routes import CompactController, InputTokensController, ModelController
from service.context.setup import build_context_windows
from service.conversations.routes import ConversationController
from service.db.session import create_engine
from service.errors import EXCEPTION_HANDLERS
from service.gc_freeze import freeze_startup_objects
from service.health import health, health_head, ready, ready_head
from service.http import DEPENDENCIES
from service.idempotency.middleware import IdempotencyMiddleware, KeyedServing
from service.idempotency.service import AnswerStore
from service.keys.service import KeyAuthenticator
from service.lifecycle.routes import ConversationBackupAdminController, ConversationLifecycleController
from service.limits.connections import MAX_BODY_BYTES
from service.limits.door import DoorMiddleware
from service.limits.policy import Limits
from service.limits.slow_readers import SlowReaderMiddleware
from service.observability import metrics, tracing
from service.observability.outages import FailingLoop
from service.observability.pool import observe_pool
from service.observability.requests import RequestObserver
from service.observability.routes import metrics_route
from service.openapi import docs_assets_router, openapi_config
from service.responses.chain_cache import ChainCache
from service.responses.history_cache import HistoryCache
from service.responses.routes import ResponseController
from service.responses.runner import TurnRunner
from service.responses.turn import TurnContext
from service.retention.purge import purge
from service.retention.routes import RetentionAdminController
from service.runtime import Runtime
from service.serving import on_stop_signal
from service.upstream.client import OpenRouterClient
from service.upstream.demo import DemoTransport
from service.webhooks.delivery import WebhookDeliverer
from service.webhooks.routes import WebhookAdminController

logger = logging.getLogger("service.app")


async def _purge_forever(runtime: Runtime) -> None:
    """Retention runs every RETENTION_INTERVAL_SECONDS, the first one an interval after start-up; across
    processes the lease in PostgreSQL lets one of them run at a time."""
    failing = FailingLoop(logger, "retention run")  # an outage: a line as it starts, one a minute, one as it ends
    while True:
        await asyncio.sleep(runtime.settings.retention_interval_seconds)
        try:
            await purge(runtime.engine, runtime.settings, process_id=runtime.cluster.heartbeat.identity.id)
        except Exception as exc:
            failing.failed(type(exc).__name__)
        else:
            failing.worked()


def create_app(
    settings: Settings,
    *,
    database_url: str | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Litestar:
    """`database_url` overrides settings (the CLI passes the embedded server's); `upstream_transport` replaces
    the network (the demo upstream when no OpenRouter key is set); `tracer_provider` turns tracing on (else
    the OTEL_* environment does, service/observability/tracing.py)."""
    url = database_url or settings.database_url
    if url is None:
        raise ValueError("create_app needs a database URL: set DATABASE_URL or start the embedded server first")
    if upstream_transport is None and settings.demo_upstream:
        upstream_transport = DemoTransport()
    idempotency_keys = IdempotencyMiddleware(max_body_bytes=MAX_BODY_BYTES)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # What the lifespan starts runs in its context, untraced; requests run in theirs, traced.
        with tracing.untraced():
            async with running(app):
                yield

    @asynccontextmanager
    async def running(app: Litestar) -> AsyncIterator[None]:
        engine = create_engine(
            url,
            pool_size=settings.db_pool_size,
            pool_timeout=settings.db_pool_timeout,
            transaction_pooler=settings.database_transaction_pooler,
        )
        observe_pool(engine)
        metrics.start_series()
        upstream = OpenRouterClient(settings, transport=upstream_transport)
        histories = HistoryCache(settings.history_cache_mb * 1024 * 1024)
        context = build_context_windows(settings, upstream, engine)
        chains = ChainCache(settings.chain_history_cache_mb * 1024 * 1024)
        turn_context = TurnContext(
            engine,
            upstream,
            histories,
            context,
            lock_ttl=settings.turn_lock_ttl,
            chains=chains,
            caps=settings.conversation_caps,
            outcome_retry_seconds=settings.outcome_retry_seconds,
        )
        runner = TurnRunner(settings, turn_context)
        runtime = Runtime(
            settings=settings,
            engine=engine,
            upstream=upstream,
            authenticator=KeyAuthenticator(
                engine, settings.admin_api_key, max_lookups=max(1, settings.db_pool_size // 4)
            ),
            turn_context=turn_context,
            turns=runner,
            limits=Limits(settings),
            cluster=ClusterNode(settings, engine, runner, direct_url=settings.database_direct_url or url),
        )
        app.state.runtime = runtime
        answers = AnswerStore(engine)
        idempotency_keys.serve(
            KeyedServing(
                engine=engine,
                answers=answers,
                authenticator=runtime.authenticator,
                limits=runtime.limits,
                keep_seconds=settings.idempotency_key_ttl,
                turn_lock_ttl=settings.turn_lock_ttl,
                holder_process=runtime.cluster.heartbeat.identity.id,
                runs=runner,
                bus=runtime.cluster.bus,
            )
        )
        await runtime.cluster.start()
        freeze_startup_objects()
        background = [asyncio.create_task(_purge_forever(runtime))]
        deliverer = WebhookDeliverer(settings, engine)
        if settings.webhook_delivery:
            background.append(asyncio.create_task(deliverer.run_forever()))
        stopping: list[asyncio.Task[None]] = []

        def stop_turns() -> None:
            # Running turns get a grace period to finish and be stored; what is left is stored as failed.
            if not stopping:
                grace = settings.shutdown_grace_period
                stopping.append(asyncio.create_task(runtime.turns.shutdown(grace)))
                stopping.append(asyncio.create_task(turn_context.stop_plain_turns(grace)))

        restore_signals = on_stop_signal(stop_turns)
        try:
            yield
        finally:
            restore_signals()
            stop_turns()
            await asyncio.gather(*stopping)
            await turn_context.close(settings.shutdown_grace_period)
            await answers.close(settings.shutdown_grace_period)
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runtime.cluster.stop()
            await deliverer.aclose()
            await upstream.aclose()
            await engine.dispose()
            if plugins:
                tracing.disable()

    if tracer_provider is None and tracing.configured():
        tracer_provider = tracing.provider_from_environment()
    secrets = (settings.admin_api_key, settings.openrouter_api_key)
    plugins = tracing.enable(tracer_provider, secrets) if tracer_provider is not None else []
    app = Litestar(
        route_handlers=[
            health,
            health_head,
            ready_head,
            ready,
            metrics_route,
            ConversationController,
            ConversationLifecycleController,
            ResponseController,
            InputTokensController,
            CompactController,
            ModelController,
            AdminController,
            AdminKeyController,
            RetentionAdminController,
            ConversationBackupAdminController,
            docs_assets_router(),
            ConsoleController,
            WebhookAdminController,
        ],
        dependencies=DEPENDENCIES,
        plugins=plugins,
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            *([tracing.RouteNamedSpans] if plugins else []),  # first: every routed request, replays too
            DoorMiddleware(),
            SlowReaderMiddleware(write_timeout=settings.stream_write_timeout),
            idempotency_keys,
        ],
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=openapi_config(),
        debug=False,
        # Logging is configured once for the process (service/observability/logs.py), uvicorn's lines included;
        # Litestar's own configuration would replace the root handler with a second format.
        logging_config=None,
    )
    # Outermost, so that every request (404s and errors raised before routing too) gets an id and a line.
    app.asgi_handler = RequestObserver(app.asgi_handler, secrets)
    return app
