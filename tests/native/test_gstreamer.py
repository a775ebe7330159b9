"""GStreamer 1.22 webrtcbin (max-bundle) publishing to and playing from Relay, with decoded content checked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack, make_frame, read_stamp

from ..conftest import RunningRelay, assert_nothing_left, first_stamp
from .conftest import gst_peer

WIDTH, HEIGHT, FPS = 320, 240, 30


def write_pattern(path: Path, seconds: float) -> None:
    """Raw I420 test-pattern frames (counters 0, 1, ...) for GStreamer's rawvideoparse."""
    with path.open("wb") as out:
        for n in range(round(seconds * FPS)):
            out.write(make_frame(n, WIDTH, HEIGHT, 0).to_ndarray().tobytes())


async def peak(track: object, frames: int = 50) -> int:
    """The largest absolute sample in `frames` decoded audio frames."""
    top = 0
    async with asyncio.timeout(10):
        for _ in range(frames):
            frame = await track.recv()  # type: ignore[attr-defined]
            top = max(top, int(np.abs(frame.to_ndarray().astype(np.int32)).max()))
    return top


async def test_gstreamer_publishes_and_an_aiortc_viewer_decodes_both(native_relay: RunningRelay,
                                                                      tmp_path: Path) -> None:
    pattern = tmp_path / "pattern.i420"
    write_pattern(pattern, 20)
    publisher = asyncio.ensure_future(gst_peer(
        "publish", native_relay.url("/whip/gst"), "--seconds", "12", "--video-file", str(pattern),
        "--width", str(WIDTH), "--height", str(HEIGHT)))
    try:
        await native_relay.wait_until(lambda: bool((s := native_relay.ctx.streams.get("gst")) and s.live), 20)
        stream = native_relay.ctx.streams.get("gst")
        assert sorted(stream.tracks) == ["audio", "video"]
        async with WhepClient(native_relay.url("/whep/gst")) as viewer:
            first = await first_stamp(viewer)
            later = await first_stamp(viewer)
            assert later.counter > first.counter, "the pattern did not advance"
            assert await peak(viewer.tracks["audio"]) > 3000, "GStreamer's 440 Hz tone decoded silent"
    finally:
        run = await publisher
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.first("answer")["status"] == 201
    assert run.first("done")["delete"] == 200
    await assert_nothing_left(native_relay)


async def test_a_gstreamer_viewer_decodes_what_relays_client_publishes(native_relay: RunningRelay,
                                                                        tmp_path: Path) -> None:
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    video = TestPatternTrack(WIDTH, HEIGHT, fps=FPS)
    async with WhipClient(native_relay.url("/whip/cam"), [video, ToneTrack()]):
        run = await gst_peer("view", native_relay.url("/whep/cam"), "--seconds", "8", "--frames-dir", str(frames_dir))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.first("answer")["status"] == 201
    done = run.first("done")
    assert done["delete"] == 200 and done["video_frames"] >= 30, done
    assert done["audio_buffers"] >= 50 and done["audio_peak"] > 3000, f"audio silent or missing: {done}"
    counters = []
    for path in sorted(frames_dir.iterdir()):
        width, height = (int(v) for v in path.stem.split("-")[-1].split("x"))
        assert (width, height) == (WIDTH, HEIGHT)
        planes = np.frombuffer(path.read_bytes(), np.uint8)[: width * height * 3 // 2].reshape(height * 3 // 2, width)
        stamp = read_stamp(av.VideoFrame.from_ndarray(planes, format="yuv420p"))
        assert stamp is not None, f"{path.name}: GStreamer decoded no readable stamp"
        counters.append(stamp.counter)
    assert len(counters) >= 3 and counters == sorted(counters) and counters[-1] > counters[0], counters
    await assert_nothing_left(native_relay)
