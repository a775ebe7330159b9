"""`relay publish`, `relay watch` and `relay probe` as subprocesses against a Relay in the test."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack, psnr, read_stamp
from relay.server.session import Session

from ..conftest import RunningRelay, make_media, reinverted, relay_with, start_relay
from ..encoder_hooks import install

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT, FPS = 320, 240, 30


_spawned: list[asyncio.subprocess.Process] = []


@pytest.fixture(autouse=True)
async def no_process_left() -> AsyncIterator[None]:
    """A failed test must not leave its CLI running."""
    yield
    while _spawned:
        proc = _spawned.pop()
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


@dataclass
class Run:
    code: int | None
    stdout: str
    stderr: str


async def spawn(
    *args: str, module: str = "relay", env: dict[str, str] | None = None, stdin: int | None = None
) -> asyncio.subprocess.Process:
    """The CLI in its own process; its peers stay on loopback like the server's."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=ROOT, stdin=stdin,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RELAY_ICE_HOST_ADDRESSES": "127.0.0.1", **(env or {})},
    )
    _spawned.append(proc)
    return proc


async def finish(proc: asyncio.subprocess.Process, timeout: float = 30) -> Run:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return Run(None, out.decode(), err.decode())
    return Run(proc.returncode, out.decode(), err.decode())


async def read_until(proc: asyncio.subprocess.Process, text: str, timeout: float = 15) -> str:
    """Read the process's stderr until `text` shows; what was read (finish() returns only the rest)."""
    assert proc.stderr is not None
    told = ""
    async with asyncio.timeout(timeout):
        while text not in told:
            line = await proc.stderr.readline()
            assert line, f"stderr closed before {text!r}: {told}"
            told += line.decode()
    return told


async def cli(*args: str, timeout: float = 30, **kwargs: object) -> Run:
    return await finish(await spawn(*args, **kwargs), timeout)  # type: ignore[arg-type]


def one_line_error(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert "Traceback" not in run.stderr, run.stderr
    assert len(lines) == 1, run.stderr
    return lines[0]


async def decoded_counters(viewer: WhepClient, count: int) -> list[int]:
    video = await viewer.wait_track("video")
    counters = []
    async with asyncio.timeout(10):
        while len(counters) < count:
            frame = await video.recv()
            stamp = read_stamp(frame)
            assert stamp is not None and psnr(frame, stamp.counter) > 25
            counters.append(stamp.counter)
    return counters


async def test_publish_file_is_forwarded_without_any_encoder(
    relay: RunningRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    media = tmp_path / "in.webm"
    make_media(media, seconds=3)
    server_counts = install(monkeypatch.setattr)  # this process is the server (and a decoding viewer)
    counts_file = tmp_path / "counts.json"
    env = {"ENCODER_COUNTS": str(counts_file)}
    proc = await spawn("publish", relay.url("/whip/file"), "--file", str(media),
                       module="tests.encoder_hooks", env=env)
    await relay.wait_until(lambda: (s := relay.ctx.streams.get("file")) is not None and s.live and len(s.tracks) == 2)
    async with WhepClient(relay.url("/whep/file")) as viewer:
        counters = await decoded_counters(viewer, 30)
    run = await finish(proc)
    assert run.code == 0, run.stderr
    assert "video vp8 as is, audio opus as is" in run.stderr
    assert counters == list(range(counters[0], counters[0] + 30)), "frames of the file were lost or reordered"
    assert counters[-1] < 3 * FPS
    assert json.loads(counts_file.read_text()) == {}, "the publisher created an encoder"
    assert dict(server_counts) == {}, "the server created an encoder"
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)

    # The hooks do see encoders: the same file, re-encoded on purpose.
    run = await cli("publish", relay.url("/whip/file"), "--file", str(media), "--transcode",
                    "--duration", "1", module="tests.encoder_hooks", env=env)
    assert run.code == 0, run.stderr
    counts = json.loads(counts_file.read_text())
    assert counts["Vp8Encoder.encode"] > 10 and counts["OpusEncoder()"] == 1, counts


@pytest.mark.parametrize("codec,suffix", [("VP8", ".webm"), ("H264", ".mp4")])
async def test_watch_records_what_arrives(relay: RunningRelay, tmp_path: Path, codec: str, suffix: str) -> None:
    video = TestPatternTrack(WIDTH, HEIGHT, FPS)
    record = tmp_path / f"out{suffix}"
    async with WhipClient(relay.url("/whip/rec"), [video, ToneTrack()], video_codec=codec, keyframe_interval=1):
        run = await cli("watch", relay.url("/whep/rec"), "--record", str(record), "--duration", "3")
    assert run.code == 0, run.stderr
    recorded = re.search(rf"recorded (\d+\.\d) s to {re.escape(str(record))}", run.stdout)
    assert recorded and abs(float(recorded[1]) - 3.0) <= 0.3, run.stdout
    with av.open(str(record)) as container:
        assert abs(container.duration / 1e6 - 3.0) < 0.4
        assert container.streams.video[0].codec_context.name == codec.lower()
        assert container.streams.audio[0].codec_context.name == "opus"
        packets = [p for p in container.demux(video=0) if p.size]
        assert packets[0].is_keyframe
        container.seek(0)
        stamps = [read_stamp(f) for f in container.decode(video=0)]
    counters = [s.counter for s in stamps if s is not None]
    assert len(counters) == len(stamps), "a recorded frame has no readable stamp"
    # A joiner may start from the cached frames since a keyframe under a second old, replayed
    # as a fast-forward (retimed: the file still lasts 3 s): up to one GOP more frames.
    assert 80 <= len(counters) <= 95 + FPS
    assert max(b - a for a, b in zip(counters, counters[1:])) == 1, "the recording skips frames"
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)


async def test_watch_waits_for_the_stream_to_go_live(relay: RunningRelay) -> None:
    viewer = await spawn("watch", relay.url("/whep/later"), "--wait", "--duration", "1", "--video-only")
    told = await read_until(viewer, "has no live publisher")  # started, and told 409 at least once
    assert "waiting for" in told
    assert viewer.returncode is None, "watch gave up on an offline stream"
    async with WhipClient(relay.url("/whip/later"), [TestPatternTrack(WIDTH, HEIGHT, FPS)], keyframe_interval=1):
        run = await finish(viewer, 15)  # it comes live only on the watch's next try
    assert run.code == 0, told + run.stderr
    fps = re.search(r"video VP8 320x240 (\d+\.\d) fps", run.stdout)
    # A joiner may start with the frames since a keyframe under a second old, fast-forwarded:
    # over this one-second watch up to a GOP (1 s) more than real time.
    assert fps and 29 <= float(fps[1]) <= 2 * FPS + 1, run.stdout


async def test_killed_publisher_is_replaced_at_once_and_watch_waits_for_it() -> None:
    """Without a reconnect grace the viewer's stream ends with its publisher, and `watch --wait` comes back."""
    async with relay_with({"forwarding": {"reconnect_grace": 0}}) as relay:
        url_whip, url_whep = relay.url("/whip/crash"), relay.url("/whep/crash")
        viewer = await spawn("watch", url_whep, "--wait", "--duration", "7", "--video-only")
        first = await spawn("publish", url_whip, "--test-pattern", "--size", f"{WIDTH}x{HEIGHT}", "--gop", "1")
        await relay.wait_until(lambda: (s := relay.ctx.streams.get("crash")) is not None and s.watching == 1,
                               timeout=20)
        stream = relay.ctx.streams.get("crash")
        assert stream is not None and stream.publisher is not None
        killed = stream.publisher
        first.kill()  # no DELETE, no BYE: the server still holds its session
        await first.wait()
        second = await spawn("publish", url_whip, "--test-pattern", "--size", f"{WIDTH}x{HEIGHT}", "--gop", "1",
                             "--duration", "6")
        await relay.wait_until(lambda: stream.live and stream.publisher is not killed, timeout=10)
        published = await finish(second, 20)
        assert published.code == 0, published.stderr
        watched = await finish(viewer, 20)
        assert watched.code == 0, watched.stderr
        assert "waiting for it to come back" in watched.stderr
        assert watched.stderr.count(f"watching {url_whep}") == 2, watched.stderr  # the second publisher's stream
        assert re.search(r"latency p50 \d+ ms", watched.stdout), watched.stdout  # it read the pattern's stamps


async def test_probe_honours_retry_after() -> None:
    running = await start_relay({"limits": {"requests_per_second": 4, "request_burst": 3}})
    try:
        run = await cli("probe", running.url("/whip/p"), running.url("/whep/p"), "--viewers", "6",
                        "--duration", "2", "--size", "160x120", "--json", timeout=60)
        assert run.code == 0, run.stderr
        result = json.loads(run.stdout)
        assert result["viewers"] == 6 and result["viewers_without_video"] == 0, result
    finally:
        await running.server.close()


async def test_probe_three_viewers_json(relay: RunningRelay) -> None:
    run = await cli("probe", relay.url("/whip/probe"), relay.url("/whep/probe"), "--viewers", "3",
                    "--duration", "3", "--size", f"{WIDTH}x{HEIGHT}", "--json", timeout=40)
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["viewers"] == 3 and len(result["per_viewer"]) == 3
    assert result["viewers_without_video"] == 0
    assert 0 < result["join_ms"]["p50"] <= result["join_ms"]["p95"] < 3000
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p95"] < 500
    # + up to a second's frames over the 3 s: a joiner's fast-forward from a keyframe under a second old
    assert 25 <= result["fps"]["min"] <= result["fps"]["mean"] <= 31 + 30 / 3
    assert result["frames_lost"] <= 9 and result["freezes"] <= 3
    assert 100 < result["publisher_kbps"] < 3000
    assert all(v["frames"] >= 75 and v["frames_unstamped"] == 0 for v in result["per_viewer"])
    assert "probe: measuring" in run.stderr, "no progress was shown"
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)


async def test_conflict_is_one_readable_line_and_leaves_no_session(relay: RunningRelay) -> None:
    async with WhipClient(relay.url("/whip/busy"), [TestPatternTrack(WIDTH, HEIGHT, FPS)]) as owner:
        run = await cli("publish", relay.url("/whip/busy"), "--test-pattern", "--duration", "1")
        assert run.code == 1
        line = one_line_error(run)
        assert line.startswith("relay publish: HTTP 409") and "already has a publisher" in line
        assert [s.kind for s in relay.ctx.sessions] == ["whip"]
        assert relay.ctx.streams.get("busy").publisher is not None
        (session,) = relay.ctx.sessions
        assert owner.location is not None and owner.location.endswith(session.path), "the owner's session is gone"
        assert session.state == "connected"
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)


async def test_wrong_token_is_one_readable_line() -> None:
    relay = await start_relay({"auth": {"open_publish": False, "publish_token": "right-token"}})
    try:
        run = await cli("publish", relay.url("/whip/locked"), "--test-pattern", "--token", "wrong-token")
        assert run.code == 1
        assert one_line_error(run).startswith("relay publish: HTTP 401")
        run = await cli("publish", relay.url("/whip/locked"), "--test-pattern", "--duration", "1",
                        env={"RELAY_TOKEN": "right-token"})
        assert run.code == 0, run.stderr
        await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)
    finally:
        await relay.server.close()


async def test_unreachable_server_and_bad_file_are_one_line() -> None:
    watched, published = await asyncio.gather(
        cli("watch", "http://127.0.0.1:9/whep/x"),
        cli("publish", "http://127.0.0.1:9/whip/x", "--file", "/nonexistent.webm"),
    )
    assert watched.code == 1 and "cannot reach http://127.0.0.1:9/whep/x" in one_line_error(watched)
    assert published.code == 2 and "cannot read /nonexistent.webm" in one_line_error(published)


async def test_ctrl_c_deletes_the_sessions(relay: RunningRelay, monkeypatch: pytest.MonkeyPatch) -> None:
    reasons: list[str] = []
    close = Session.close

    async def recording_close(self: Session, reason: str) -> None:
        if not self.closed:
            reasons.append(reason)
        await close(self, reason)

    monkeypatch.setattr(Session, "close", recording_close)
    publisher = await spawn("publish", relay.url("/whip/sig"), "--test-pattern", "--size", f"{WIDTH}x{HEIGHT}")
    await relay.wait_until(lambda: (s := relay.ctx.streams.get("sig")) is not None and s.size is not None)
    viewer = await spawn("watch", relay.url("/whep/sig"))
    await relay.wait_until(lambda: relay.ctx.streams.get("sig").packets_in > 0
                           and len(relay.ctx.streams.get("sig").viewers) == 1)
    # both ends in their steady state: a second of video has gone out to the watcher
    await relay.wait_until(lambda: all(v.outputs["video"].frames >= FPS
                                       for v in relay.ctx.streams.get("sig").viewers))
    viewer.send_signal(signal.SIGINT)  # first: once the publisher leaves, the server ends its viewers itself
    watched = await finish(viewer, 10)
    publisher.send_signal(signal.SIGINT)
    published = await finish(publisher, 10)
    assert (watched.code, published.code) == (0, 0), watched.stderr + published.stderr
    assert "Traceback" not in watched.stderr + published.stderr
    assert watched.stdout.startswith("watched ") and published.stdout.startswith("published ")
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0, timeout=3)
    assert reasons == ["DELETE by the client"] * 2


async def test_bot_command_publishes_what_the_bot_makes_and_stops_cleanly(relay: RunningRelay) -> None:
    async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(WIDTH, HEIGHT)]):
        proc = await spawn("bot", "tests.bots:invert", "--input", relay.url("/whep/cam"),
                           "--output", relay.url("/whip/cam-inverted"), "--stats-json")
        await read_until(proc, "cam-inverted", timeout=60)  # a loaded machine takes long to import aiortc
        await relay.wait_until(lambda: (s := relay.ctx.streams.get("cam-inverted")) is not None and s.live, 60)
        async with WhepClient(relay.url("/whep/cam-inverted"), kinds=("video",)) as viewer:
            track = await viewer.wait_track("video")
            async with asyncio.timeout(30):
                while (stamp := read_stamp(reinverted(await track.recv()))) is None:
                    pass
        assert proc.stdout is not None
        figures = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert figures["bots"][0]["name"] == "invert" and figures["bots"][0]["output"] == "cam-inverted"
        proc.send_signal(signal.SIGINT)
        run = await finish(proc)
    assert run.code == 0, run.stderr
    assert "bots done: invert stopped" in run.stderr
    await relay.wait_until(lambda: not relay.ctx.sessions.count("whip") and not relay.ctx.sessions.count("whep"))
    assert stamp.counter >= 0


async def test_bot_command_names_a_bad_bot_in_one_line() -> None:
    run = await cli("bot", "tests.bots:nothing", "--input", "http://127.0.0.1:9/whep/x")
    assert run.code == 2 and "has no nothing" in one_line_error(run)


async def test_publish_sends_lines_as_data_and_watch_prints_the_chat(relay: RunningRelay) -> None:
    publisher = await spawn("publish", relay.url("/whip/data"), "--test-pattern", "--size", "160x120",
                            "--no-audio", "--data", "-", "--data-label", "telemetry", stdin=asyncio.subprocess.PIPE)
    await relay.wait_until(lambda: (s := relay.ctx.streams.get("data")) is not None and s.live, timeout=20)
    async with WhepClient(relay.url("/whep/data"), kinds=("video",), encoded=True,
                          data_channels=["telemetry", "chat"]) as viewer:
        await viewer.wait_connected()
        assert publisher.stdin is not None
        publisher.stdin.write("".join(f"reading {n}\n" for n in range(20)).encode())
        await publisher.stdin.drain()
        assert [await viewer.recv("telemetry") for _ in range(20)] == [f"reading {n}" for n in range(20)]

        viewer.send("chat", json.dumps({"name": "Alice"}))
        viewer.send("chat", json.dumps({"text": "hi from Alice"}))
        await relay.wait_until(lambda: relay.ctx.streams.get("data").chat.history)
        watched = await cli("watch", relay.url("/whep/data"), "--chat", "--video-only", "--duration", "2")
        assert watched.code == 0, watched.stderr
        assert re.search(r"^\d\d:\d\d:\d\d Alice: hi from Alice$", watched.stdout, re.MULTILINE), watched.stdout
    publisher.send_signal(signal.SIGINT)
    published = await finish(publisher)
    assert published.code == 0, published.stderr
    assert "20 lines on data channel 'telemetry'" in published.stdout
