"""FileSource: a media file's packets as they are, looped, H.264 turned into Annex-B."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.client.filesource import FileSource

from ..conftest import make_media


async def test_file_source_loops_with_rising_timestamps_and_annex_b(tmp_path: Path) -> None:
    media = tmp_path / "short.mp4"
    make_media(media, seconds=0.5, video="libx264")
    source = FileSource(str(media), as_is=("video", "audio"), loop=True)
    assert source.info.as_is == {"video": "H264", "audio": "opus"}
    video = source.tracks["video"]
    async with asyncio.timeout(5):
        packets = [await video.recv() for _ in range(40)]
    source.stop()
    steps = [b.pts - a.pts for a, b in zip(packets, packets[1:])]
    assert source.loops >= 2
    assert all(0 < step < 3000 + 0.1 * 90000 for step in steps), f"timestamps go back or jump: {steps}"
    assert steps.count(3000) >= len(steps) - source.loops, f"frames are not 1/30 s apart: {steps}"
    assert all(bytes(p)[:4] == b"\x00\x00\x00\x01" or bytes(p)[:3] == b"\x00\x00\x01" for p in packets), \
        "MP4's H.264 was not turned into Annex-B"
