"""Settings from the environment, in one place. Every name here is documented in README.md."""

from __future__ import annotations

import base64
import binascii
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from service.limits.sizes import ConversationCaps
from service.observability.logs import default_format

DEFAULT_OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
MAX_RETENTION_DAYS = 36500  # what the admin API takes too (a longer interval overflows PostgreSQL's)
WEBHOOK_CLAIM_SECONDS = 60.0
_MAX_PORT = 65535
DisconnectPolicy = Literal["continue", "cancel"]
LogFormat = Literal["json", "text"]


class ConfigError(Exception):
    """A setting that cannot be used; the message is one line meant for the operator."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _number(
    env: Mapping[str, str], name: str, default: float, *, minimum: float = 0, maximum: float | None = None
) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        if "_" in raw:  # float() takes "1_000"; no operator means a digit separator there
            raise ValueError
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):  # float() takes "nan" and "inf", which no comparison below refuses
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {_written(minimum)}, got {raw!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {_written(maximum)}, got {raw!r}")
    return value


def _written(bound: float) -> str:
    """A bound as an operator would write it: 315360000, not 3.1536e+08."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


# The longest duration a setting may give: the expiry times the service computes from one must stay within what
# PostgreSQL's timestamps and the event loop's timers hold, and a longer one is a mistake (a unit, a digit too many).
_LONGEST_SECONDS = 10 * 365 * 86400


def _seconds(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0) -> float:
    return _number(env, name, default, minimum=minimum, maximum=_LONGEST_SECONDS)


def _hours(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0) -> float:
    return _number(env, name, default, minimum=minimum, maximum=_LONGEST_SECONDS / 3600)


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = _number(env, name, default, minimum=minimum, maximum=maximum)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {env.get(name)!r}")
    return int(value)


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _console_secret(raw: str) -> str | None:
    """The key that signs console sessions and their CSRF tokens: at least 32 characters, as COMPACTION_KEY."""
    secret = raw.strip()
    if secret and len(secret) < 32:
        raise ConfigError(f"CONSOLE_SESSION_SECRET must be at least 32 characters, got {len(secret)}")
    return secret or None


def most_workers() -> int:
    """The most WORKERS taken: four per core, and at least 64. Each worker is a process of about 100 MB, started
    at once: WORKERS=1e15 was taken as a number and started processes until the machine's memory ran out."""
    return max(64, 4 * (os.cpu_count() or 1))


def _model_windows(raw: str) -> tuple[tuple[str, int], ...]:
    """MODEL_CONTEXT_WINDOWS: `vendor/model=128000,other/model=32000`."""
    windows = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        model, _, size = entry.rpartition("=")
        size = size.strip()
        # isdigit() alone also takes other scripts' digits and superscripts ("²"), which int() then refuses.
        if not model.strip() or not (size.isascii() and size.isdigit()) or int(size) < 1:
            raise ConfigError(f"MODEL_CONTEXT_WINDOWS entries must look like vendor/model=128000, got {entry!r}")
        windows.append((model.strip(), int(size)))
    return tuple(windows)


def _days(env: Mapping[str, str], name: str) -> int | None:
    """A retention period in whole days, within what the admin API takes; unset or empty keeps forever."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return _int(env, name, 0, minimum=1, maximum=MAX_RETENTION_DAYS)


def _compaction_key(raw: str, name: str = "COMPACTION_KEY") -> str | None:
    key = raw.strip()
    if key and len(key) < 32:
        raise ConfigError(f"{name} must be at least 32 characters (it seals compaction items)")
    if key.lower().startswith(DATABASE_KEY_PREFIX):
        # Taken as a passphrase here, it would be read as a database's key once moved to COMPACTION_KEYS_PREVIOUS
        # at a key change, and open nothing it sealed.
        raise ConfigError(
            f"{name} must not start with {DATABASE_KEY_PREFIX} (a database's key, for COMPACTION_KEYS_PREVIOUS)"
        )
    return key or None


def _admin_key(raw: str) -> str | None:
    key = raw.strip()
    if key and len(key) < 16:
        raise ConfigError("ADMIN_API_KEY must be at least 16 characters (it opens every tenant's data)")
    return key or None


def _previous_compaction_keys(raw: str) -> tuple[str, ...]:
    """COMPACTION_KEYS_PREVIOUS: keys COMPACTION_KEY had before, or a database's own key as `convstore
    compaction-key` prints it (`db:` and 32 bytes in base64url), for items imported from that database."""
    keys = []
    for part in (part.strip() for part in raw.split(",")):
        if part.lower().startswith(DATABASE_KEY_PREFIX):
            if database_key_bytes(part) is None:
                raise ConfigError(
                    "each db: entry of COMPACTION_KEYS_PREVIOUS must be a key as `convstore compaction-key` prints it"
                )
            keys.append(part)
        elif (key := _compaction_key(part, "each of COMPACTION_KEYS_PREVIOUS")) is not None:
            keys.append(key)
    return tuple(keys)


DATABASE_KEY_PREFIX = "db:"


def database_key_bytes(entry: str) -> bytes | None:
    """The 32 bytes of a `db:` entry, or None when it is not one."""
    if not entry.lower().startswith(DATABASE_KEY_PREFIX):
        return None
    try:
        key = base64.urlsafe_b64decode(entry[len(DATABASE_KEY_PREFIX) :].encode())
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == 32 else None


def normalize_database_url(raw: str, name: str = "DATABASE_URL") -> str:
    """Accept postgresql:// or postgresql+asyncpg:// (and postgres://); return the asyncpg form. `name`: the
    setting it came from, for the error."""
    parts = urlsplit(raw.strip())
    scheme = parts.scheme.lower()
    if scheme in {"postgresql", "postgres"}:
        rest = raw.strip()[len(parts.scheme) :]
        url = "postgresql+asyncpg" + rest
    elif scheme == "postgresql+asyncpg":
        url = raw.strip()
    else:
        raise ConfigError(
            f"{name} must start with postgresql:// or postgresql+asyncpg:// (got scheme {parts.scheme or 'none'!r})"
        )
    if not parts.hostname and "host=" not in parts.query:
        raise ConfigError(f"{name} has no host: expected postgresql://user@host:port/dbname")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{name} has an invalid port") from None
    if not parts.path.strip("/"):
        raise ConfigError(f"{name} has no database name: expected postgresql://user@host:port/dbname")
    return _with_asyncpg_ssl(url)


def _with_asyncpg_ssl(url: str) -> str:
    """libpq's `sslmode=require` (what operators write) as asyncpg's `ssl=require`, which takes the same values."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(name == "sslmode" for name, _ in query) or any(name == "ssl" for name, _ in query):
        return url
    renamed = [("ssl" if name == "sslmode" else name, value) for name, value in query]
    return urlunsplit(parts._replace(query=urlencode(renamed, safe="/")))


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    # LISTEN and migrations need a session of their own: behind a pooler in transaction mode, the server itself.
    database_direct_url: str | None = None
    database_transaction_pooler: bool = False
    data_dir: Path = Path(".data")
    openrouter_api_key: str | None = field(default=None, repr=False)
    openrouter_base_url: str = DEFAULT_OPENROUTER_BASE_URL
    openrouter_app_url: str | None = None
    openrouter_app_title: str | None = None
    admin_api_key: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    auto_migrate: bool = True
    workers: int = 1
    db_pool_size: int = 20
    db_pool_timeout: float = 30.0
    upstream_connect_timeout: float = 10.0
    upstream_first_byte_timeout: float = 300.0
    upstream_idle_timeout: float = 300.0
    upstream_total_timeout: float = 900.0
    upstream_max_attempts: int = 3
    upstream_retry_max_wait: float = 30.0
    upstream_retry_base_delay: float = 0.5
    upstream_max_connections: int = 1000
    turn_lock_ttl: float = 960.0
    stream_disconnect_policy: DisconnectPolicy = "continue"
    shutdown_grace_period: float = 30.0
    outcome_retry_seconds: float = 600.0
    max_input_items: int = 2000
    history_cache_mb: int = 32
    chain_history_cache_mb: int = 32
    sse_keepalive_seconds: float = 15.0
    idempotency_key_ttl: float = 86400.0
    # Context windows (service/context): pinned windows by model id, and how often OpenRouter's catalog is re-read.
    model_context_windows: tuple[tuple[str, int], ...] = ()
    model_catalog_refresh_seconds: float = 3600.0
    retention_responses_days: int | None = None
    retention_conversations_idle_days: int | None = None
    retention_interval_seconds: float = 3600.0
    retention_batch_size: int = 1000
    process_heartbeat_timeout: float = 10.0
    # Limits (service/limits/); 0 turns a rate or a cap off. Rates and caps are split across limit_processes.
    tenant_requests_per_second: float = 100.0
    tenant_request_burst: float = 200.0
    key_requests_per_second: float = 0.0
    key_request_burst: float = 0.0
    tenant_turns_in_flight: int = 100
    key_turns_in_flight: int = 0
    upstream_tenant_share: float = 0.5
    limit_processes: int = 0  # 0: WORKERS
    stream_write_timeout: float = 30.0
    http_header_timeout: float = 10.0
    http_keepalive_timeout: float = 5.0
    max_connections: int = 4096
    compaction_model: str | None = None  # unset: a turn's own model writes its compaction summaries
    compaction_key: str | None = field(default=None, repr=False)  # unset: a key kept in the database
    # Keys that sealed items before COMPACTION_KEY was changed: they still open those items, never seal.
    previous_compaction_keys: tuple[str, ...] = field(default=(), repr=False)
    log_format: LogFormat = "json"
    metrics_port: int | None = None
    console_session_secret: str | None = field(default=None, repr=False)
    console_session_hours: float = 12.0
    max_conversation_items: int = 100_000
    max_conversation_bytes: int = 32 * 1024 * 1024
    webhook_delivery: bool = True
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_hours: float = 24.0
    webhook_allow_private_addresses: bool = False
    webhook_poll_seconds: float = 1.0
    webhook_timeout_seconds: float = 10.0
    # How long a process's claim on a delivery lasts (not an environment setting): an attempt, and the record of
    # it, must end well within it, or another process sends the event again meanwhile.
    webhook_claim_seconds: float = WEBHOOK_CLAIM_SECONDS

    @property
    def demo_upstream(self) -> bool:
        """No OpenRouter key: answer turns from the built-in offline demo upstream."""
        return not self.openrouter_api_key

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        raw_url = env.get("DATABASE_URL", "").strip()
        database_url = normalize_database_url(raw_url) if raw_url else None
        direct = env.get("DATABASE_DIRECT_URL", "").strip()
        log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {log_level!r}")
        policy = env.get("STREAM_DISCONNECT_POLICY", "continue").strip().lower() or "continue"
        if policy not in {"continue", "cancel"}:
            raise ConfigError(f"STREAM_DISCONNECT_POLICY must be continue or cancel, got {policy!r}")
        base_url = (env.get("OPENROUTER_BASE_URL") or DEFAULT_OPENROUTER_BASE_URL).strip().rstrip("/")
        if urlsplit(base_url).scheme not in {"http", "https"} or not _host_of(base_url):
            raise ConfigError(f"OPENROUTER_BASE_URL must be an http(s) URL with a host, got {base_url!r}")
        if "@" in urlsplit(base_url).netloc:
            # Shown on /health and at start-up; the upstream's credential is OPENROUTER_API_KEY.
            raise ConfigError("OPENROUTER_BASE_URL must not carry a user or password: set OPENROUTER_API_KEY")
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            # The exporter takes any text and fails on every export, in a thread: spans lost without a word.
            endpoint = env.get(name, "").strip()
            if endpoint and (urlsplit(endpoint).scheme not in {"http", "https"} or not _host_of(endpoint)):
                # Not echoed: written without its scheme, an endpoint's credentials (user:token@host) would be.
                raise ConfigError(
                    f"{name} must be the http(s) URL of an OTLP/HTTP collector, e.g. http://collector:4318"
                )
        total = _seconds(env, "UPSTREAM_TOTAL_TIMEOUT", 900.0, minimum=0.01)
        # The heartbeat renews a live turn's claim and key (service/cluster/heartbeat.py); the TTL still outlives
        # one upstream call, so that a turn whose process cannot reach the database for its heartbeats meanwhile
        # does not lose its conversation and its Idempotency-Key to another request, and run twice.
        turn_lock_ttl = _seconds(env, "TURN_LOCK_TTL", max(960.0, total + 60.0), minimum=1)
        if turn_lock_ttl <= total:
            raise ConfigError(
                f"TURN_LOCK_TTL ({turn_lock_ttl:g} s) must be longer than UPSTREAM_TOTAL_TIMEOUT ({total:g} s): a "
                "turn still running when its claim expires loses its conversation and its Idempotency-Key to "
                "another request, and runs twice"
            )
        log_format = env.get("LOG_FORMAT", "").strip().lower() or default_format()
        if log_format not in {"json", "text"}:
            raise ConfigError(f"LOG_FORMAT must be json or text, got {log_format!r}")
        port = _int(env, "PORT", 8000, minimum=0, maximum=_MAX_PORT)  # 0: a free port, which "Serving on" names
        metrics_port = _int(env, "METRICS_PORT", 0, minimum=0, maximum=_MAX_PORT) or None
        if metrics_port is not None and metrics_port == port:
            raise ConfigError(
                f"METRICS_PORT must differ from PORT (both {port}): it is served by a listener of its own"
            )
        transaction_pooler = _bool(env, "DATABASE_TRANSACTION_POOLER", False)
        if transaction_pooler and not (database_url and direct):
            # Otherwise the first statement a pooler refuses (a session setting at connect) would be the message.
            raise ConfigError(
                "DATABASE_TRANSACTION_POOLER=true needs DATABASE_URL (the pooler) and DATABASE_DIRECT_URL (the "
                "server itself, for migrations and LISTEN, which a pooler in transaction mode cannot carry)"
            )
        return cls(
            database_url=database_url,
            database_direct_url=normalize_database_url(direct, "DATABASE_DIRECT_URL") if direct else None,
            database_transaction_pooler=transaction_pooler,
            data_dir=Path(env.get("DATA_DIR", "").strip() or ".data"),
            openrouter_api_key=env.get("OPENROUTER_API_KEY", "").strip() or None,
            openrouter_base_url=base_url,
            openrouter_app_url=env.get("OPENROUTER_APP_URL", "").strip() or None,
            openrouter_app_title=env.get("OPENROUTER_APP_TITLE", "").strip() or None,
            admin_api_key=_admin_key(env.get("ADMIN_API_KEY", "")),
            host=env.get("HOST", "").strip() or "127.0.0.1",
            port=port,
            log_level=log_level,
            auto_migrate=_bool(env, "AUTO_MIGRATE", True),
            workers=_int(env, "WORKERS", 1, minimum=1, maximum=most_workers()),
            db_pool_size=_int(env, "DB_POOL_SIZE", 20, minimum=1),
            db_pool_timeout=_seconds(env, "DB_POOL_TIMEOUT", 30.0, minimum=0.1),
            upstream_connect_timeout=_seconds(env, "UPSTREAM_CONNECT_TIMEOUT", 10.0, minimum=0.01),
            upstream_first_byte_timeout=_seconds(env, "UPSTREAM_FIRST_BYTE_TIMEOUT", 300.0, minimum=0.01),
            upstream_idle_timeout=_seconds(env, "UPSTREAM_IDLE_TIMEOUT", 300.0, minimum=0.01),
            upstream_total_timeout=total,
            upstream_max_attempts=_int(env, "UPSTREAM_MAX_ATTEMPTS", 3, minimum=1),
            upstream_retry_max_wait=_seconds(env, "UPSTREAM_RETRY_MAX_WAIT", 30.0),
            upstream_retry_base_delay=_seconds(env, "UPSTREAM_RETRY_BASE_DELAY", 0.5),
            upstream_max_connections=_int(env, "UPSTREAM_MAX_CONNECTIONS", 1000, minimum=1),
            turn_lock_ttl=turn_lock_ttl,
            stream_disconnect_policy=policy,  # type: ignore[arg-type]
            shutdown_grace_period=_seconds(env, "SHUTDOWN_GRACE_PERIOD", 30.0),
            outcome_retry_seconds=_seconds(env, "OUTCOME_RETRY_SECONDS", 600.0, minimum=1),
            max_input_items=_int(env, "MAX_INPUT_ITEMS", 2000, minimum=1),
            history_cache_mb=_int(env, "HISTORY_CACHE_MB", 32, minimum=0),
            chain_history_cache_mb=_int(env, "CHAIN_HISTORY_CACHE_MB", 32, minimum=0),
            sse_keepalive_seconds=_seconds(env, "SSE_KEEPALIVE_SECONDS", 15.0, minimum=0.05),
            idempotency_key_ttl=_seconds(env, "IDEMPOTENCY_KEY_TTL", 86400.0, minimum=1),
            model_context_windows=_model_windows(env.get("MODEL_CONTEXT_WINDOWS", "")),
            model_catalog_refresh_seconds=_seconds(env, "MODEL_CATALOG_REFRESH_SECONDS", 3600.0, minimum=1),
            retention_responses_days=_days(env, "RETENTION_RESPONSES_DAYS"),
            retention_conversations_idle_days=_days(env, "RETENTION_CONVERSATIONS_IDLE_DAYS"),
            retention_interval_seconds=_seconds(env, "RETENTION_INTERVAL_SECONDS", 3600.0, minimum=1),
            retention_batch_size=_int(env, "RETENTION_BATCH_SIZE", 1000, minimum=1),
            process_heartbeat_timeout=_seconds(env, "PROCESS_HEARTBEAT_TIMEOUT", 10.0, minimum=0.2),
            **_limit_settings(env),
            compaction_model=env.get("COMPACTION_MODEL", "").strip() or None,
            compaction_key=_compaction_key(env.get("COMPACTION_KEY", "")),
            previous_compaction_keys=_previous_compaction_keys(env.get("COMPACTION_KEYS_PREVIOUS", "")),
            log_format=log_format,  # type: ignore[arg-type]
            metrics_port=metrics_port,
            console_session_secret=_console_secret(env.get("CONSOLE_SESSION_SECRET", "")),
            console_session_hours=_hours(env, "CONSOLE_SESSION_HOURS", 12.0, minimum=0.01),
            webhook_delivery=_bool(env, "WEBHOOK_DELIVERY", True),
            webhook_retry_base_seconds=_seconds(env, "WEBHOOK_RETRY_BASE_SECONDS", 5.0, minimum=0.01),
            webhook_retry_hours=_hours(env, "WEBHOOK_RETRY_HOURS", 24.0, minimum=0),
            webhook_allow_private_addresses=_bool(env, "WEBHOOK_ALLOW_PRIVATE_ADDRESSES", False),
            webhook_poll_seconds=_seconds(env, "WEBHOOK_POLL_SECONDS", 1.0, minimum=0.01),
            # At most half a delivery's claim: the rest is the record's, which may wait for a pooled connection.
            webhook_timeout_seconds=_number(
                env, "WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=WEBHOOK_CLAIM_SECONDS / 2
            ),
        )

    @property
    def processes_sharing_limits(self) -> int:
        return self.limit_processes or self.workers

    @property
    def conversation_caps(self) -> ConversationCaps:
        return ConversationCaps(self.max_conversation_items, self.max_conversation_bytes)


def _limit_settings(env: Mapping[str, str]) -> dict[str, Any]:
    tenant_rate = _number(env, "TENANT_REQUESTS_PER_SECOND", 100.0)
    key_rate = _number(env, "KEY_REQUESTS_PER_SECOND", 0.0)
    share = _number(env, "UPSTREAM_TENANT_SHARE", 0.5)
    if share > 1:
        raise ConfigError(f"UPSTREAM_TENANT_SHARE must be a fraction between 0 and 1, got {share:g}")
    return {
        "tenant_requests_per_second": tenant_rate,
        "tenant_request_burst": _number(env, "TENANT_REQUEST_BURST", 2 * tenant_rate),
        "key_requests_per_second": key_rate,
        "key_request_burst": _number(env, "KEY_REQUEST_BURST", 2 * key_rate),
        "tenant_turns_in_flight": _int(env, "TENANT_TURNS_IN_FLIGHT", 100),
        "key_turns_in_flight": _int(env, "KEY_TURNS_IN_FLIGHT", 0),
        "upstream_tenant_share": share,
        "limit_processes": _int(env, "LIMIT_PROCESSES", 0),
        "stream_write_timeout": _seconds(env, "STREAM_WRITE_TIMEOUT", 30.0, minimum=0.01),
        "http_header_timeout": _seconds(env, "HTTP_HEADER_TIMEOUT", 10.0, minimum=0.01),
        "http_keepalive_timeout": _seconds(env, "HTTP_KEEPALIVE_TIMEOUT", 5.0, minimum=0.01),
        "max_connections": _int(env, "MAX_CONNECTIONS", 4096, minimum=1),
        "max_conversation_items": _int(env, "MAX_CONVERSATION_ITEMS", 100_000),
        "max_conversation_bytes": _int(env, "MAX_CONVERSATION_BYTES", 32 * 1024 * 1024),
    }
