"""Running the service's command line as an operator would: a subprocess of this Python, from the project root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**overrides: str) -> dict[str, str]:
    """This run's environment without the settings that select a database, an upstream or a port: a subprocess
    gets only those its test names."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "OPENROUTER_API_KEY", "ADMIN_API_KEY", "TEST_DATABASE_URL", "PORT", "DATA_DIR"}
    }
    env.update(overrides)
    return env


def service_cli(
    database_url: str, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`python -m service <args>` on `database_url`, its output captured; `env`: variables set besides."""
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, input=stdin, capture_output=True, timeout=120, check=False
    )
