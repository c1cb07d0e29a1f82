"""FrameLog against a plain list of frames: every (start, stop) window, across compressed-block boundaries.

The HTTP tests reach it through resumes (tests/test_streaming.py) and the stored event log
(tests/test_database_resilience.py), but only at the windows those scenarios happen to produce."""

from __future__ import annotations

import random
import string
import zlib

import pytest

from service.responses.frame_log import FrameLog, inflated


@pytest.mark.parametrize("count", [0, 1, 23, 24, 25, 40, 57, 80])
def test_every_window_of_frames_joins_exactly_the_frames_in_it(count: int) -> None:
    frames = [f'event: e\ndata: {{"n":{n},"pad":"{"x" * (n % 7)}"}}\n\n'.encode() for n in range(count)]
    log = FrameLog()
    for frame in frames:
        log.append(frame)
    assert len(log) == count
    for start in range(-1, count + 2):
        assert log.joined(start) == b"".join(frames[max(start, 0) :])
        for stop in range(-1, count + 2):
            assert log.joined(start, stop) == b"".join(frames[max(start, 0) : max(stop, 0)]), (start, stop)


def _frames(count: int, size: int) -> list[bytes]:
    """Frames that compress poorly (random text), so that a long log spans many of the reader's input slices."""
    rng = random.Random(count * 31 + size)
    return [
        b"event: e\ndata: " + "".join(rng.choices(string.ascii_letters, k=size)).encode() + b"\n\n"
        for _ in range(count)
    ]


@pytest.mark.parametrize(("count", "size", "piece"), [(0, 10, 7), (1, 10, 7), (40, 300, 64), (300, 4000, 1 << 16)])
def test_a_packed_log_reads_back_as_its_frames_in_pieces_no_larger_than_asked(
    count: int, size: int, piece: int
) -> None:
    frames = _frames(count, size)
    log = FrameLog()
    for frame in frames:
        log.append(frame)
    tail = b"event: response.completed\ndata: {}\n\n"
    for stop in sorted({0, count // 2, count}):
        pieces = list(inflated(log.packed(stop, tail), piece))
        assert all(0 < len(p) <= piece for p in pieces)
        assert b"".join(pieces) == b"".join(frames[:stop]) + tail


def test_a_log_whose_last_stream_holds_nothing_reads_back_and_a_cut_one_is_refused() -> None:
    frames = _frames(40, 300)
    log = FrameLog()
    for frame in frames:
        log.append(frame)
    whole = log.packed(40, b"")
    assert b"".join(inflated(whole + zlib.compress(b""), 100)) == b"".join(frames)
    for cut in (len(whole) - 1, len(whole) // 2):
        with pytest.raises(ValueError, match="ends inside a zlib stream"):
            b"".join(inflated(whole[:cut], 100))
