"""The body of a turn's request to OpenRouter, made of parts: encoded JSON, and the stored history as one text.

A small body is joined and sent in one write. A large one (a long conversation's history) is sent in chunks
encoded as they go: the history's text, which the history cache keeps anyway, stays its only whole copy. Joined,
it was copied twice more (encoded, then into the body) and a third time into the socket transport's buffer for
what the socket did not take at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

# A history shorter than this is joined: one write, and no chunking on the turn's hot path.
STREAM_FROM_CHARS = 1 << 20
# Each chunk is encoded when the previous one was written (aiohttp waits for the socket to drain between).
CHUNK_CHARS = 1 << 18


@dataclass(frozen=True)
class SplicedBody:
    parts: tuple[bytes | str, ...]
    length: int  # in bytes, as sent: the Content-Length

    @classmethod
    def of(cls, *parts: bytes | str) -> SplicedBody:
        return cls(parts, sum(len(part) if isinstance(part, bytes) else utf8_length(part) for part in parts))

    async def chunks(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, bytes):
                yield part
                continue
            for start in range(0, len(part), CHUNK_CHARS):
                yield part[start : start + CHUNK_CHARS].encode()


def utf8_length(text: str) -> int:
    if text.isascii():  # a flag of the string: no pass over it
        return len(text)
    return sum(len(text[start : start + CHUNK_CHARS].encode()) for start in range(0, len(text), CHUNK_CHARS))


# What a turn hands the upstream client.
UpstreamBody = bytes | SplicedBody
