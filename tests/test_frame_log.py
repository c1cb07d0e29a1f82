"""FrameLog against a plain list of frames: every (start, stop) window, across compressed-block boundaries.

The HTTP tests reach it through resumes (tests/test_streaming.py) and the stored event log
(tests/test_database_resilience.py), but only at the windows those scenarios happen to produce."""

from __future__ import annotations

import pytest

from service.responses.frame_log import FrameLog


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
