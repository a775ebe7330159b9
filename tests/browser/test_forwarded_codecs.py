"""Chromium publishes VP9 from the publish page (?codec=VP9): forwarded as it is, watched, recorded.

Every check names VP9 where it was carried: the server's stream, the codec the
watching Chromium decodes, the frames an encoded WHEP client gets and the file
recorded, so the test fails if anything but VP9 was forwarded.
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
from relay.media.bitstream import vp9_size

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


async def test_chromium_publishes_vp9_and_chromium_watches_it(new_page: Any, tmp_path: Path) -> None:
    relay = await start_relay({"recording": {"dir": str(tmp_path / "rec"), "enabled": True}})
    try:
        publisher = await new_page()
        await publisher.goto(relay.url("/publish/vp9?codec=VP9"))
        assert await publisher.evaluate("document.querySelector('#codec').value") == "VP9"
        await publisher.click("#start")
        await wait_js(publisher, "window.relayPublish && window.relayPublish.state === 'live'")
        await relay.wait_until(lambda: bool((s := relay.ctx.streams.get("vp9")) and s.size), 20)

        async with aiohttp.ClientSession() as http, http.get(relay.url("/api/streams/vp9")) as response:
            described = await response.json()
        assert described["video"]["codec"] == "VP9", described
        # The fake camera's 640x480, or what Chromium scaled it to for its bandwidth estimate.
        assert described["video"]["width"] * 3 == described["video"]["height"] * 4 <= 640 * 3, described

        viewer = await new_page()
        await viewer.goto(relay.url("/watch/vp9"))
        await assert_playing(viewer)
        assert await viewer.evaluate(INBOUND_CODEC) == "video/VP9"

        async with WhepClient(relay.url("/whep/vp9"), kinds=("video",), encoded=True) as encoded:
            async with asyncio.timeout(20):
                while "video" not in encoded.encoded:
                    await asyncio.sleep(0.05)
                frames = [await encoded.encoded["video"].recv() for _ in range(30)]
        assert encoded.encoded["video"].codec == "VP9"
        assert frames[0].keyframe and (size := vp9_size(frames[0].data)) and size[0] * 3 == size[1] * 4

        # aiortc decodes no VP9: Relay's decoding client does not offer it and is told what to offer.
        with pytest.raises(SessionError) as refused:
            async with WhepClient(relay.url("/whep/vp9"), kinds=("video",)):
                pass
        assert refused.value.status == 422 and "VP9" in str(refused.value)

        await asyncio.sleep(2)  # two seconds more of the recording
        await publisher.click("#stop")
        await finished(relay, "vp9")
        (path,) = files(tmp_path / "rec", "vp9")
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            assert path.suffix == ".webm" and video.codec_context.name == "vp9"
            assert container.duration is not None and container.duration / 1e6 > 2
            decoded = [frame for _, frame in zip(range(10), container.decode(video), strict=False)]
        assert len(decoded) == 10 and decoded[0].width * 3 == decoded[0].height * 4
        assert page_errors(publisher) == [] and page_errors(viewer) == []
    finally:
        await relay.server.close()
