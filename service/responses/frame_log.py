"""The frames a streamed run has published, kept for its followers, for resumes and for the stored event log.

A run holds every frame until it ends, and a worker holds many runs at once: the frames were the largest part
of a stream's memory, growing with the answer's length. The frames of one stream repeat each other (the same
event type, item id and keys in every delta), so older frames are kept zlib-compressed in blocks of 16, which
compress to a small fraction of their size; the newest stay as they are, since live followers
read only those. Reading further back (a resume, a slow reader, the event log at the end) decompresses the
blocks it needs.

The stored log (`packed`) is the same blocks as they are, then one more zlib stream for the frames after them:
zlib streams one after the other, read back by `inflated`. It is a fraction of the frames' size, so storing it
holds little in memory, and most of it was compressed while the stream ran.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterator

_BLOCK = 16  # frames per compressed block
_KEEP = 8  # newest frames never compressed: a follower is rarely further behind than this


class FrameLog:
    def __init__(self) -> None:
        self._blocks: list[bytes] = []  # compressed, _BLOCK frames each
        self._ends: list[array[int]] = []  # for each block: where each of its frames ends, decompressed
        self._recent: list[bytes] = []  # the frames after the blocks

    def __len__(self) -> int:
        return len(self._blocks) * _BLOCK + len(self._recent)

    def append(self, frame: bytes) -> None:
        self._recent.append(frame)
        if len(self._recent) == _BLOCK + _KEEP:
            block = self._recent[:_BLOCK]
            del self._recent[:_BLOCK]
            ends = array("I")
            size = 0
            for old in block:
                size += len(old)
                ends.append(size)
            self._blocks.append(zlib.compress(b"".join(block), 1))
            self._ends.append(ends)

    def packed(self, stop: int, tail: bytes) -> bytes:
        """Frames 0 up to `stop` (excluded), then `tail`, in their stored form: the compressed blocks before
        `stop` as they are, the rest compressed a frame at a time into one more stream."""
        stop = min(stop, len(self))
        whole_blocks, end_offset = divmod(min(stop, len(self._blocks) * _BLOCK), _BLOCK)
        rest = zlib.compressobj(1)
        parts = self._blocks[:whole_blocks]
        if end_offset:
            cut = zlib.decompress(self._blocks[whole_blocks])[: self._ends[whole_blocks][end_offset - 1]]
            parts.append(rest.compress(cut))
        for frame in self._recent[: max(stop - len(self._blocks) * _BLOCK, 0)]:
            parts.append(rest.compress(frame))
        parts.append(rest.compress(tail))
        parts.append(rest.flush())
        return b"".join(parts)

    def joined(self, start: int = 0, stop: int | None = None) -> bytes:
        """Frames `start` (a sequence number) up to `stop` (excluded; the newest included when None), as one
        chunk."""
        stop = len(self) if stop is None else min(stop, len(self))
        start = max(start, 0)
        if start >= stop:
            return b""
        packed = len(self._blocks) * _BLOCK
        if start >= packed:
            recent = self._recent[start - packed : stop - packed]
            return recent[0] if len(recent) == 1 else b"".join(recent)
        first_block, offset = divmod(start, _BLOCK)
        last_block, end_offset = divmod(min(stop, packed), _BLOCK)
        parts = [zlib.decompress(block) for block in self._blocks[first_block:last_block]]
        if end_offset:
            parts.append(zlib.decompress(self._blocks[last_block])[: self._ends[last_block][end_offset - 1]])
        if offset:
            parts[0] = parts[0][self._ends[first_block][offset - 1] :]
        return b"".join([*parts, *self._recent[: max(stop - packed, 0)]])


_FEED = 64 * 1024  # compressed bytes handed to zlib at a time: its unconsumed_tail and unused_data are copies


def inflated(packed: bytes, piece_size: int) -> Iterator[bytes]:
    """A stored log's frames (`FrameLog.packed`), decompressed at most `piece_size` bytes at a time. The input is
    fed to zlib in bounded slices: handed the whole rest, zlib copied the rest at every call (unconsumed_tail) and
    at every stream's end (unused_data), which made reading a long log quadratic."""
    view = memoryview(packed)
    position, stream, data, fed = 0, zlib.decompressobj(), b"", False
    while True:
        if not data and position < len(view):
            data = bytes(view[position : position + _FEED])
            position += len(data)
        if not data and not fed:
            return  # every stream ended, and nothing is left
        piece = stream.decompress(data, piece_size)
        fed = True
        if piece:
            yield piece
        if stream.eof:
            data, stream, fed = stream.unused_data, zlib.decompressobj(), False
        else:
            data = stream.unconsumed_tail
            if not piece and not data and position >= len(view):
                raise ValueError("a stored event log ends inside a zlib stream")
