"""Where an image or a file part says its content is: checked when a client sends it, since once stored it goes
upstream on every later turn of the thread, and a value no upstream can take (an image URL that is no URL, a data
URL whose base64 is broken) would stop every one of them with an upstream 400 naming no item.

What is taken: an `http(s)` URL with a host (and a valid port), without spaces, or a `data:` URL whose payload,
when it says `;base64`, holds only base64 characters (URL-safe ones, line breaks as `base64` wraps its output,
percent-escapes and whitespace around it included); a file's `file_data` may also be bare base64, which OpenAI's
spec describes it as. A data URL is checked in one pass over its bytes, without decoding."""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import urlsplit

from service.errors import InvalidRequest

_BASE64_BYTES = (string.ascii_letters + string.digits + "+/=-_%\r\n").encode()


def _is_base64(text: str) -> bool:
    """Base64 characters only, line breaks between them, whitespace around them; some data besides padding."""
    text = text.strip()
    return text.isascii() and not text.encode().translate(None, _BASE64_BYTES) and bool(text.strip("=%\r\n"))


def _data_url_problem(value: str) -> str | None:
    header, comma, payload = value.partition(",")
    if not comma:
        return "a data URL needs a comma before its data (data:<media type>;base64,<data>)"
    if header.lower().replace(" ", "").endswith(";base64") and not _is_base64(payload):
        return "its data is not base64"
    return None


def _http_url_problem(value: str) -> str | None:
    if any(character.isspace() for character in value):
        return "a URL holds no spaces"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (read for its check: a port out of range, or not a number, raises)
    except ValueError:
        return "it is not a valid URL"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "it must be a fully qualified http(s) URL or a data URL"
    return None


def _url_problem(value: str, *, bare_base64: bool) -> str | None:
    if value[:5].lower() == "data:":
        return _data_url_problem(value)
    if bare_base64:
        return None if _is_base64(value) else "it is neither a data URL nor base64"
    return _http_url_problem(value)


def check_media_sources(part: dict[str, Any], where: str) -> None:
    """400 naming the field of an `input_image` or `input_file` part whose URL or data no upstream can take."""
    fields = ("image_url",) if part.get("type") == "input_image" else ("file_url", "file_data")
    for field in fields:
        value = part.get(field)
        if not isinstance(value, str):
            continue
        problem = _url_problem(value, bare_base64=field == "file_data")
        if problem is not None:
            raise InvalidRequest(
                f"Content part {where}.{field} cannot be sent to a model: {problem}",
                param=f"{where}.{field}",
                code="invalid_value",
            )
