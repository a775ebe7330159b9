"""A viewer's queue: bounded for a viewer that never drains, resumed on a keyframe."""

from __future__ import annotations

import time
from fractions import Fraction

import av

from relay.media.fanout import FanOut, MediaFrame
from relay.media.viewer import ViewerTrack


def test_a_slow_viewer_is_bounded_and_resumes_on_a_keyframe() -> None:
    """A viewer whose sender never drains holds at most its queue, then waits for a keyframe."""
    requests: list[str] = []
    fanout = FanOut("video")
    track = ViewerTrack(fanout, 10, requests.append)
    fanout.add(track)  # as the sender's first recv() would

    def frame(n: int, keyframe: bool) -> MediaFrame:
        packet = av.Packet(bytes(1000))
        packet.pts, packet.time_base = n * 3000, Fraction(1, 90000)
        return MediaFrame(packet, keyframe, 1000)

    for n in range(1000):
        fanout.push(frame(n, keyframe=n % 300 == 0))
        assert len(track._queue) <= 10
    assert track.overflows >= 3 and requests.count("viewer queue overflow") == track.overflows
    assert track.waiting_keyframe  # frame 910 overflowed the queue again: 911-999 were dropped
    fanout.push(frame(1000, keyframe=False))
    assert len(track._queue) == 0, "nothing but a keyframe is queued while waiting for one"
    fanout.push(frame(1001, keyframe=True))
    assert len(track._queue) == 1 and not track.waiting_keyframe


async def test_a_late_replay_is_not_caught_up_in_a_burst() -> None:
    """The replay bitrate is a ceiling: a stalled loop delays the rest of the GOP, never bunches it.

    Sent back to back, a GOP of seconds overran an aiortc viewer's socket buffer
    (kernel RcvbufErrors), and the loss was too large for NACK to repair.
    """
    fanout = FanOut("video")
    for n in range(10):
        packet = av.Packet(bytes(10_000))
        packet.pts, packet.time_base = n * 3000, Fraction(1, 90000)
        fanout.push(MediaFrame(packet, n == 0, 10_000))
    track = ViewerTrack(fanout, 90, lambda reason: None, replay_bitrate=8_000_000)  # 10 ms a frame
    await track.recv()  # joins: the keyframe goes at once
    time.sleep(0.05)  # blocks the loop for five frames' time, as a busy relay would
    sent = []
    for _ in range(5):
        await track.recv()
        sent.append(time.monotonic())
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert min(gaps) > 0.009, f"overdue frames went out back to back: {gaps}"
    track.stop()
