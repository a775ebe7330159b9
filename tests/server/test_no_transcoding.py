"""The forwarded media is never decoded or encoded by the server process."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack, read_stamp

from ..conftest import spawn_relay

TESTS = Path(__file__).resolve().parents[1]  # counting_server.py lives there


async def watch_stamps(viewer: WhepClient, count: int) -> list[int]:
    counters: list[int] = []
    async with asyncio.timeout(15):
        while "video" not in viewer.tracks:
            await asyncio.sleep(0.02)
        while len(counters) < count:
            stamp = read_stamp(await viewer.tracks["video"].recv())
            assert stamp is not None
            counters.append(stamp.counter)
    return counters


@pytest.mark.parametrize("codec,viewers", [("VP8", 3), ("H264", 3)])
async def test_server_creates_no_encoder_or_decoder(tmp_path: Path, codec: str, viewers: int) -> None:
    counts_file = tmp_path / "counts.json"
    # The script's directory comes first on sys.path: `relay` must still be this checkout's.
    env = dict(os.environ, RELAY_CODEC_COUNTS=str(counts_file), PYTHONPATH=str(TESTS.parent))
    server = spawn_relay(tmp_path, script=[str(TESTS / "counting_server.py")], env=env)
    try:
        tracks = [TestPatternTrack(320, 240), ToneTrack()]
        async with WhipClient(server.url("/whip/x"), tracks, video_codec=codec):
            clients = [WhepClient(server.url("/whep/x")) for _ in range(viewers)]
            try:
                for client in clients:
                    await client.start()
                results = await asyncio.gather(*(watch_stamps(c, 20) for c in clients))
                for counters in results:
                    assert counters[-1] - counters[0] >= 19
                async with asyncio.timeout(5):
                    frame = await clients[0].tracks["audio"].recv()
                assert frame.sample_rate == 48000
            finally:
                for client in clients:
                    await client.close()
    finally:
        assert server.stop() == 0
    counts = json.loads(counts_file.read_text())
    assert counts == {}, f"the server created or used codecs: {counts}"
