"""Metrics for the CLI's serve: several workers share one metrics directory, and METRICS_PORT serves a scrape
without credentials from the parent process (which sees every worker's values there)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

from service.config import ConfigError, Settings
from service.observability import metrics

logger = logging.getLogger("service.metrics")


def prepare_workers(settings: Settings) -> None:
    """Before uvicorn starts its workers: with more than one, they need a shared metrics directory. It must be
    set before prometheus_client is imported in a worker, hence the environment (the workers inherit it)."""
    if settings.workers <= 1 or os.environ.get(metrics.MULTIPROC_ENV):
        return
    directory = tempfile.mkdtemp(prefix="convstore-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = directory
    atexit.register(shutil.rmtree, directory, ignore_errors=True)


def serve_metrics(settings: Settings) -> None:
    if settings.metrics_port is None:
        return
    from prometheus_client import start_http_server  # noqa: PLC0415

    try:
        start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.scrape_registry())
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {exc.strerror or exc}"
        ) from None
    logger.info("metrics on http://%s:%d/metrics (no credential)", settings.host, settings.metrics_port)
