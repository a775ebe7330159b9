"""Recording: real aiortc publishers, files opened and decoded with PyAV."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from yarl import URL

from relay.client import WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..conftest import FPS, RunningRelay, analyse, files, finished, poll_until, recordings, spawn_relay, start_relay

EXTENSION = {"VP8": ".webm", "H264": ".mp4"}


async def recording_relay(tmp_path: Path, **settings: Any) -> RunningRelay:
    return await start_relay({"recording": {"dir": str(tmp_path / "rec"), **settings}})


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_recording_holds_exactly_what_was_published(tmp_path: Path, codec: str) -> None:
    relay = await recording_relay(tmp_path, enabled=False, streams={"cam": {"enabled": True}})
    try:
        video = TestPatternTrack(320, 240, FPS)
        async with WhipClient(relay.url("/whip/cam"), [video, ToneTrack()], video_codec=codec):
            await relay.wait_until(lambda: video.frames_sent >= 1)
            described = await get_json(relay.url("/api/streams/cam"))
            assert described["recording"] is True
            await relay.wait_until(lambda: video.frames_sent >= 6 * FPS)  # six seconds of it
        published = video.frames_sent
        await finished(relay, "cam")
        (path,) = files(tmp_path / "rec", "cam")
        assert path.suffix == EXTENSION[codec]
        listed = (await get_json(relay.url("/api/recordings")))["recordings"]
    finally:
        await relay.server.close()

    recorded = analyse(path)
    assert recorded.codecs == {"video": codec.lower(), "audio": "opus"}
    assert recorded.size == (320, 240)
    assert recorded.first_is_keyframe
    assert abs(recorded.duration - published / FPS) < 0.3, (recorded.duration, published)
    assert abs(len(recorded.video) - published) <= 0.02 * published, (len(recorded.video), published)
    recorded.assert_continuous()
    # H.264: the assembler cannot place the stream's very first packet, so frame 0 is lost
    # and the keyframe asked for at frame 1 comes at about frame 2.
    assert recorded.counters[0] <= 3, "the recording missed the start of the stream"
    assert len(recorded.audio) >= 0.9 * recorded.duration / 0.020, "audio is missing"
    assert abs(recorded.audio[0] - recorded.video[0]) < 0.1, "audio and video start apart"
    assert abs(recorded.audio[-1] - recorded.video[-1]) < 0.15, "audio and video drifted apart"

    (entry,) = listed
    assert entry["stream"] == "cam" and entry["file"] == path.name
    assert entry["codecs"] == {"video": codec, "audio": "opus"}
    assert entry["size"] == path.stat().st_size and entry["recording"] is False
    assert abs(entry["duration"] - recorded.duration) < 0.1
    assert entry["start"].endswith("Z") and entry["url"] == f"/api/recordings/cam/{path.name}"


async def test_runtime_start_stop_download_and_delete(tmp_path: Path) -> None:
    relay = await recording_relay(tmp_path)
    root = tmp_path / "rec"
    try:
        video = TestPatternTrack(320, 240, FPS)
        async with aiohttp.ClientSession() as http:
            async with WhipClient(relay.url("/whip/live"), [video, ToneTrack()]):
                await relay.wait_until(lambda: video.frames_sent >= 30)
                assert (await get_json(relay.url("/api/streams/live")))["recording"] is False
                assert files(root, "live") == []
                async with http.post(relay.url("/api/streams/live/recording")) as response:
                    assert response.status == 200
                    assert (await response.json())["recording"] is True
                started = video.frames_sent
                await relay.wait_until(lambda: video.frames_sent >= started + 2 * FPS)  # two seconds recorded
                async with http.delete(relay.url("/api/streams/live/recording")) as response:
                    assert (await response.json())["recording"] is False
                stopped = video.frames_sent
                assert await recordings(relay).wait_finished(10)
                assert (await get_json(relay.url("/api/streams/live")))["recording"] is False
                # publishing goes on after the stop: no second file may start
                await relay.wait_until(lambda: video.frames_sent >= stopped + FPS // 2)
            (path,) = files(root, "live")
            recorded = analyse(path)
            assert recorded.first_is_keyframe
            recorded.assert_continuous()
            assert started - 1 <= recorded.counters[0] <= started + 12, "it did not start on the next keyframe"
            assert stopped - 2 <= recorded.counters[-1] <= stopped + 1

            url = relay.url(f"/api/recordings/live/{path.name}")
            data = path.read_bytes()
            async with http.get(url, headers={"Range": "bytes=100-199"}) as response:
                assert response.status == 206 and response.content_type == "video/webm"
                assert await response.read() == data[100:200]
            async with http.get(url, headers={"Range": f"bytes={len(data) - 50}-"}) as response:
                assert response.status == 206 and await response.read() == data[-50:]
            async with http.get(url) as response:
                assert response.status == 200 and await response.read() == data
            async with http.delete(url) as response:
                assert response.status == 204
            assert not path.exists()
            async with http.get(url) as response:
                assert response.status == 404
                assert (await response.json())["type"] == "urn:relay:problem:unknown-recording"
    finally:
        await relay.server.close()


async def test_new_file_on_resolution_change_and_on_reconnect(tmp_path: Path) -> None:
    relay = await recording_relay(tmp_path, enabled=True)
    root = tmp_path / "rec"
    try:
        video = TestPatternTrack(320, 240, FPS)
        async with WhipClient(relay.url("/whip/cam"), [video, ToneTrack()]):
            await relay.wait_until(lambda: video.frames_sent >= 45)
            video.width, video.height = 480, 360
            await relay.wait_until(lambda: video.frames_sent >= 90)
        await finished(relay, "cam")
        again = TestPatternTrack(320, 240, FPS)
        async with WhipClient(relay.url("/whip/cam"), [again, ToneTrack()]):
            await relay.wait_until(lambda: again.frames_sent >= 30)
        await finished(relay, "cam")
    finally:
        await relay.server.close()
    first, second, third = (analyse(p) for p in files(root, "cam"))
    assert [first.size, second.size, third.size] == [(320, 240), (480, 360), (320, 240)]
    for recorded in (first, second, third):
        assert recorded.first_is_keyframe
        recorded.assert_continuous()
    assert second.counters[0] == first.counters[-1] + 1, "frames lost at the resolution change"
    assert third.counters[0] <= 3


async def test_segments_split_on_keyframes_without_losing_frames(tmp_path: Path) -> None:
    relay = await recording_relay(tmp_path, enabled=True, segment_seconds=1)
    try:
        video = TestPatternTrack(320, 240, FPS)
        async with WhipClient(relay.url("/whip/cam"), [video, ToneTrack()]):
            await relay.wait_until(lambda: video.frames_sent >= 3.3 * FPS)
        await finished(relay, "cam")
    finally:
        await relay.server.close()
    segments = [analyse(p) for p in files(tmp_path / "rec", "cam")]
    assert len(segments) >= 3
    for before, after in itertools.pairwise(segments):
        assert after.counters[0] == before.counters[-1] + 1, "frames lost between segments"
    for segment in segments:
        assert segment.first_is_keyframe and segment.audio
        segment.assert_continuous()
    for segment in segments[:-1]:
        assert 1.0 <= segment.duration < 1.8, [s.duration for s in segments]


async def test_bad_names_are_refused_and_nothing_is_written_outside(tmp_path: Path) -> None:
    relay = await recording_relay(tmp_path, enabled=True)
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in [
                ("POST", "/api/streams/..%2Fx/recording"),
                ("DELETE", "/api/streams/..%2Fx/recording"),
                ("POST", "/whip/..%2Fx"),
                ("GET", "/api/recordings/..%2F..%2Fx/20250101T000000.000Z.webm"),
                ("GET", "/api/recordings/cam/..%2F..%2Frelay.yaml"),
                ("DELETE", "/api/recordings/cam/..%2F..%2Frelay.yaml"),
                ("GET", "/api/recordings?stream=..%2Fx"),
                ("POST", "/api/streams/../x/recording"),
            ]:
                async with http.request(method, URL(relay.url(path), encoded=True)) as response:
                    assert 400 <= response.status < 500, (method, path, response.status)
                    assert response.content_type == "application/problem+json"
        with pytest.raises(ValueError):
            recordings(relay).library.inside(tmp_path / "rec" / ".." / "x")
        # A publisher that does get through still writes only inside the directory.
        video = TestPatternTrack(320, 240, FPS)
        async with WhipClient(relay.url("/whip/x"), [video]):
            await relay.wait_until(lambda: video.frames_sent >= 15)
        await finished(relay, "x")
    finally:
        await relay.server.close()
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 1 and written[0].parts[:2] == ("rec", "x"), written


async def test_retention_by_age_and_size_keeps_the_newest(tmp_path: Path) -> None:
    root = tmp_path / "rec" / "cam"
    root.mkdir(parents=True)
    now = time.time()
    ages = {"20250101T000000.000Z.webm": 7200, "20250101T010000.000Z.webm": 1800,
            "20250101T020000.000Z.mp4": 600, "20250101T030000.000Z.webm": 60}
    for name, age in ages.items():
        (root / name).write_bytes(b"\0" * 100_000)
        os.utime(root / name, (now - age, now - age))
    (root / "notes.txt").write_text("not a recording: never touched")
    # Over 1 h old: the first; then over 250 kB in all: the oldest of the rest.
    relay = await recording_relay(tmp_path, max_age_hours=1, max_total_mb=0.25)
    try:
        await relay.wait_until(lambda: len(list(root.iterdir())) == 3)  # the sweep at start
        assert await recordings(relay).sweep() == []
        listed = (await get_json(relay.url("/api/recordings?stream=cam")))["recordings"]
    finally:
        await relay.server.close()
    assert sorted(p.name for p in root.iterdir()) == ["20250101T020000.000Z.mp4", "20250101T030000.000Z.webm",
                                                      "notes.txt"]
    assert [e["file"] for e in listed] == ["20250101T030000.000Z.webm", "20250101T020000.000Z.mp4"]
    assert all(e["duration"] is None and e["codecs"] == {} for e in listed), "unreadable files are listed as such"


async def publish_to_process(url: str, seconds: float, codec: str, stop: Callable[[], int]) -> tuple[int, int]:
    """Publish for `seconds`, then call `stop()` while still publishing; frames sent by then, the exit code."""
    video = TestPatternTrack(320, 240, FPS)
    async with WhipClient(url, [video, ToneTrack()], video_codec=codec):
        await poll_until(lambda: video.frames_sent >= seconds * FPS, timeout=20)
        sent = video.frames_sent
        code = await asyncio.to_thread(stop)
    return sent, code


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_a_killed_server_leaves_a_playable_file(tmp_path: Path, codec: str) -> None:
    root = tmp_path / "rec"
    server = spawn_relay(tmp_path, {"recording": {"enabled": True, "dir": str(root)}})
    try:
        _, code = await publish_to_process(server.url("/whip/cam"), 6, codec, lambda: server.stop(signal.SIGKILL))
        assert code == -signal.SIGKILL
    finally:
        server.stop(signal.SIGKILL)
    (path,) = files(root, "cam")
    recorded = analyse(path)
    assert recorded.first_is_keyframe and recorded.audio
    assert recorded.duration >= 4.5, recorded.duration
    recorded.assert_continuous()


async def test_sigterm_finalises_the_file(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    server = spawn_relay(tmp_path, script=["-m", "relay", "serve", "--record", "--recordings-dir", str(root)])
    try:
        sent, code = await publish_to_process(server.url("/whip/cam"), 3, "VP8", lambda: server.stop(signal.SIGTERM))
        assert code == server.process.returncode == 0
    finally:
        server.stop(signal.SIGKILL)
    (path,) = files(root, "cam")
    recorded = analyse(path)
    assert recorded.header_duration is not None, "no duration header: the file was not finalised"
    assert abs(recorded.header_duration - recorded.duration) < 0.1
    assert len(recorded.video) >= sent - 3, (len(recorded.video), sent)
    recorded.assert_continuous()


async def test_an_audio_only_stream_is_recorded_to_webm(tmp_path: Path) -> None:
    relay = await recording_relay(tmp_path, enabled=True)
    try:
        tone = ToneTrack()
        async with WhipClient(relay.url("/whip/mic"), [tone]):
            await relay.wait_until(lambda: tone.frames_sent >= 100)
        sent = tone.frames_sent
        await finished(relay, "mic")
    finally:
        await relay.server.close()
    (path,) = files(tmp_path / "rec", "mic")
    assert path.suffix == ".webm"
    with av.open(str(path)) as container:
        assert [s.codec_context.name for s in container.streams] == ["opus"]
        packets = [p for p in container.demux() if p.size]
    assert sent - 5 <= len(packets) <= sent
    assert float(packets[0].pts * packets[0].time_base) < 0.1
