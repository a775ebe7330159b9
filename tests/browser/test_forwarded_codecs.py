"""Chromium publishes VP9 or AV1 from the publish page (?codec=VP9): forwarded as it is, watched, recorded.

Every check names the codec where it was carried: the server's stream, the
codec the watching Chromium decodes, the frames an encoded WHEP client gets and
the file recorded, so the test fails if anything else was forwarded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from relay.client import WhepClient
from relay.client.session import SessionError
from relay.media.bitstream import video_size
from relay.sdp import FFMPEG_CODECS

from ..conftest import files, finished, start_relay
from .conftest import assert_playing, page_errors, wait_js

# The codec the watch page's <video> decodes, as its peer connection reports it.
INBOUND_CODEC = """
async () => {
  const stats = await window.relayWatch.pc.getStats();
  const inbound = [...stats.values()].find(s => s.type === "inbound-rtp" && s.kind === "video" && s.codecId);
  return inbound ? stats.get(inbound.codecId).mimeType : null;
}
"""


@pytest.mark.parametrize("codec", ["VP9", "AV1"])
async def test_chromium_publishes_and_chromium_watches_it(new_page: Any, tmp_path: Path, codec: str) -> None:
    relay = await start_relay({"recording": {"dir": str(tmp_path / "rec"), "enabled": True}})
    name = codec.lower()
    try:
        publisher = await new_page()
        await publisher.goto(relay.url(f"/publish/{name}?codec={codec}"))
        assert await publisher.evaluate("document.querySelector('#codec').value") == codec
        await publisher.click("#start")
        await wait_js(publisher, "window.relayPublish && window.relayPublish.state === 'live'")
        await relay.wait_until(lambda: bool((s := relay.ctx.streams.get(name)) and s.size), 20)

        async with aiohttp.ClientSession() as http, http.get(relay.url(f"/api/streams/{name}")) as response:
            described = await response.json()
        assert described["video"]["codec"] == codec, described
        # The fake camera's 640x480, or what Chromium scaled it to for its bandwidth estimate.
        assert described["video"]["width"] * 3 == described["video"]["height"] * 4 <= 640 * 3, described

        viewer = await new_page()
        await viewer.goto(relay.url(f"/watch/{name}"))
        await assert_playing(viewer)
        assert await viewer.evaluate(INBOUND_CODEC) == f"video/{codec}"

        async with WhepClient(relay.url(f"/whep/{name}"), kinds=("video",), encoded=True) as encoded:
            async with asyncio.timeout(20):
                while "video" not in encoded.encoded:
                    await asyncio.sleep(0.05)
                frames = [await encoded.encoded["video"].recv() for _ in range(30)]
        assert encoded.encoded["video"].codec == codec
        assert frames[0].keyframe and (size := video_size(codec, frames[0].data)) and size[0] * 3 == size[1] * 4

        # aiortc decodes neither: Relay's decoding client does not offer it and is told what to offer.
        with pytest.raises(SessionError) as refused:
            async with WhepClient(relay.url(f"/whep/{name}"), kinds=("video",)):
                pass
        assert refused.value.status == 422 and codec in str(refused.value)

        await asyncio.sleep(2)  # two seconds more of the recording
        await publisher.click("#stop")
        await finished(relay, name)
        (path,) = files(tmp_path / "rec", name)
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            assert path.suffix == ".webm" and FFMPEG_CODECS[video.codec_context.name] == codec
            assert container.duration is not None and container.duration / 1e6 > 2
            decoded = [frame for _, frame in zip(range(10), container.decode(video), strict=False)]
        assert len(decoded) == 10 and decoded[0].width * 3 == decoded[0].height * 4
        assert page_errors(publisher) == [] and page_errors(viewer) == []
    finally:
        await relay.server.close()
