"""Bots in process (BotHost) against a real Relay: decoded frames in, a derived stream out."""

from __future__ import annotations

import asyncio
import json
import statistics
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import av
import numpy as np
import pytest
from aiortc.codecs.vpx import Vp8Decoder

from relay.client import WhepClient, WhipClient
from relay.client.bot import Bot, BotHost, data_url, load_bot, sibling_url
from relay.client.testpattern import Stamp, TestPatternTrack, ToneTrack, latency_ms, make_frame, psnr, read_stamp
from tests.bots import flaky, invert, passive, slow

from ..conftest import RunningRelay, poll_until, read_events, reinverted

WIDTH, HEIGHT = 320, 240


async def output_frames(viewer: WhepClient, count: int) -> list[tuple[Stamp, float, av.VideoFrame]]:
    """(stamp read after re-inverting, its latency in ms, the frame as received) of `count` frames."""
    track = await viewer.wait_track("video")
    got = []
    async with asyncio.timeout(30):
        while len(got) < count:
            frame = await track.recv()
            stamp = read_stamp(reinverted(frame))
            if stamp:
                got.append((stamp, latency_ms(stamp), frame))
    return got


@asynccontextmanager
async def hosting(host: BotHost) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.ensure_future(host.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_invert_bot_output_carries_the_inputs_stamps_inverted(relay: RunningRelay) -> None:
    pattern = TestPatternTrack(WIDTH, HEIGHT)
    async with WhipClient(relay.url("/whip/cam"), [pattern]):
        host = BotHost([invert], relay.url("/whep/cam"), [relay.url("/whip/cam-inverted")], events=False)
        async with hosting(host):
            await relay.wait_until(lambda: (s := relay.ctx.streams.get("cam-inverted")) is not None and s.live, 30)
            async with WhepClient(relay.url("/whep/cam-inverted"), kinds=("video",)) as viewer:
                got = await output_frames(viewer, 60)
                sent = pattern.frames_sent
        stats = host.stats[0]
    counters = [stamp.counter for stamp, _, _ in got]
    assert counters == sorted(counters) and counters[-1] - counters[0] >= 59 and counters[-1] < sent
    for stamp, _, frame in got[-5:]:
        assert read_stamp(frame) is None, "the output frame is not inverted"
        assert psnr(reinverted(frame), stamp.counter) > 25
    latencies = [ms for _, ms, _ in got]
    print(f"\ninvert bot: output latency p50 {statistics.median(latencies):.0f} ms, "
          f"max {max(latencies):.0f} ms; bot lag {stats.lag_ms} ms, fps {stats.fps}")
    assert stats.frames >= 60 and stats.crashes == 0 and stats.state == "stopped"


async def test_slow_bot_gets_the_newest_frame_and_a_crashing_one_restarts(relay: RunningRelay) -> None:
    async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(WIDTH, HEIGHT)]):
        host = BotHost([slow, flaky], relay.url("/whep/cam"),
                       [relay.url("/whip/cam-slow"), relay.url("/whip/cam-flaky")], events=False)
        async with hosting(host):
            await relay.wait_until(lambda: all((s := relay.ctx.streams.get(n)) is not None and s.live
                                               for n in ("cam-slow", "cam-flaky")), 30)
            async with WhepClient(relay.url("/whep/cam-slow"), kinds=("video",)) as viewer:
                got = await output_frames(viewer, 12)
            await poll_until(lambda: host.stats[1].crashes >= 3, 30)
            frames_after_crashes = host.stats[1].frames
            await poll_until(lambda: host.stats[1].frames > frames_after_crashes + 5, 30)
            slow_stats, flaky_stats = host.stats
    # The slow bot takes 200 ms a frame: it skips the frames that came meanwhile, so its output
    # stays as fresh as one frame's work (a queue would fall further behind with every frame).
    steps = [b[0].counter - a[0].counter for a, b in zip(got, got[1:])]
    assert statistics.median(steps) >= 4, steps
    assert max(ms for _, ms, _ in got[-4:]) < 2000
    assert slow_stats.drops >= 3 * slow_stats.frames // 2 and 1 <= slow_stats.fps <= 8
    assert flaky_stats.crashes >= 3 and "every tenth frame" in (flaky_stats.last_error or "")


async def test_two_bots_on_one_stream_share_one_decoder(relay: RunningRelay, monkeypatch: pytest.MonkeyPatch) -> None:
    counts: Counter[str] = Counter()
    real_init = Vp8Decoder.__init__

    def counted(self: Vp8Decoder) -> None:
        counts["Vp8Decoder()"] += 1
        real_init(self)

    monkeypatch.setattr(Vp8Decoder, "__init__", counted)
    async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(WIDTH, HEIGHT)]):
        host = BotHost([invert, passive], relay.url("/whep/cam"), [relay.url("/whip/cam-inverted")], events=False)
        async with hosting(host):
            await poll_until(lambda: all(s.frames >= 30 for s in host.stats), 20)
    # The server decodes nothing (tests/server/test_no_transcoding.py): this one is the host's.
    assert counts == {"Vp8Decoder()": 1}, counts
    assert host.kinds == ("video",)


async def test_motion_bot_events_reach_data_channel_viewers_and_event_streams(relay: RunningRelay) -> None:
    """The test pattern's stripes move every frame: the motion bot says so to the input's and the output's viewers."""
    motion = load_bot("examples/motion.py:bot")
    async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(WIDTH, HEIGHT)]), \
            WhepClient(relay.url("/whep/cam"), kinds=("video",), data_channels=["events"]) as viewer, \
            aiohttp.ClientSession() as http:
        await viewer.wait_connected()
        async with http.get(relay.url("/api/streams/cam/data/events")) as input_events:
            await asyncio.sleep(0.2)  # the reader is registered once its response started
            host = BotHost([motion], relay.url("/whep/cam"), [relay.url("/whip/cam-motion")])
            async with hosting(host):
                await relay.wait_until(lambda: (s := relay.ctx.streams.get("cam-motion")) is not None and s.live, 30)
                async with http.get(relay.url("/api/streams/cam-motion/data/events")) as output_events:
                    channel = [json.loads(await asyncio.wait_for(viewer.recv("events"), 10)) for _ in range(2)]
                    over_http = [json.loads(data) for _, data in await read_events(input_events, 2)]
                    on_output = [json.loads(data) for _, data in await read_events(output_events, 1)]
                    await poll_until(lambda: host.stats[0].messages >= 2, 10)  # counted once both POSTs are done
    for event in channel + over_http + on_output:
        assert set(event) == {"motion"} and 0 <= event["motion"] <= 1
    assert max(e["motion"] for e in channel + over_http + on_output) > 0.2


def dominant_hz(samples: np.ndarray, rate: int = 48000) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum[1:]) + 1) * rate / samples.size


async def test_audio_bot_hears_the_tone_and_publishes_what_it_returns(relay: RunningRelay) -> None:
    heard: list[float] = []
    echo = Bot("echo")

    @echo.audio(numpy="s16")
    def hear(samples: np.ndarray) -> np.ndarray:
        heard.append(dominant_hz(samples.reshape(-1, 2)[:, 0] if samples.size % 2 == 0 else samples.ravel()))
        return samples

    echo.publish("cam-echo")
    async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(WIDTH, HEIGHT), ToneTrack(440)]):
        host = BotHost([echo], relay.url("/whep/cam"), events=False)
        assert host.kinds == ("audio",) and host.stats[0].output == "cam-echo"
        async with hosting(host):
            await relay.wait_until(lambda: (s := relay.ctx.streams.get("cam-echo")) is not None and s.live, 30)
            async with WhepClient(relay.url("/whep/cam-echo"), kinds=("audio",)) as listener:
                track = await listener.wait_track("audio")
                async with asyncio.timeout(30):
                    frames = [await track.recv() for _ in range(50)]
    received = np.concatenate([f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0] for f in frames[10:]])
    assert all(f.sample_rate == 48000 for f in frames)
    assert abs(dominant_hz(received) - 440) < 15
    assert len(heard) >= 50 and abs(statistics.median(heard) - 440) < 15


def test_bots_are_named_as_module_object(tmp_path: object) -> None:
    assert load_bot("tests.bots:invert") is invert
    assert load_bot("examples/motion.py:bot").name == "motion"
    function_bot = load_bot("tests.bots:inverted")
    assert isinstance(function_bot, Bot) and function_bot.handlers["video"].func.__name__ == "inverted"
    for bad in ("tests.bots", "tests.bots:nothing", "tests.bots:seen", "no_such_module:x"):
        with pytest.raises((ValueError, ImportError)):
            load_bot(bad)


def test_the_examples_make_frames_from_frames() -> None:
    """Each example's handler on real test-pattern pictures (the motion bot runs end to end above)."""
    edges, overlay = load_bot("examples/edges.py:bot"), load_bot("examples/overlay.py:bot")
    frame = make_frame(7, WIDTH, HEIGHT, 0)
    gray = frame.to_ndarray(format="gray")
    outline = edges.handlers["video"].func(gray)
    assert outline.shape == gray.shape and outline.dtype == np.uint8
    assert outline[100:, 40:].mean() > 20 and outline[100:, 40:].max() > 100  # the stripes' edges
    rgb = frame.to_ndarray(format="rgb24")
    drawn = overlay.handlers["video"].func(rgb)
    assert drawn.shape == rgb.shape and (drawn != rgb).any(axis=2)[-40:].mean() > 0.05  # the clock's band
    assert (drawn[:100] == rgb[:100]).all()  # and nothing above it


def test_urls_next_to_the_input() -> None:
    assert sibling_url("http://h:8080/whep/cam?token=x", "whip", "out") == "http://h:8080/whip/out"
    assert data_url("http://h:8080/whep/cam") == "http://h:8080/api/streams/cam/data/events"
