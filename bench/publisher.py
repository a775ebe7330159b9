"""The publisher role: one WHIP session (VP8 test pattern + Opus tone), and a direct leg.

The direct leg is a second peer connection from the same encoder straight to
the probe, so relay-added latency is measured against it in the same run.
Run by `bench.measure` as `python -m bench.publisher`; requests on stdin.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from relay.client import WhipClient
from relay.client.testpattern import ToneTrack
from relay.media import aiortc_patch

from .media import LiveVideo, LoopTrack, encode_loop
from .peers import loopback_only, wait_connected
from .proc import serve

CONNECT_TIMEOUT = 20.0


class Publisher:
    def __init__(self) -> None:
        self.whip: WhipClient | None = None
        self.live: LiveVideo | None = None
        self.direct: RTCPeerConnection | None = None

    async def start(
        self, url: str, mode: str, width: int, height: int, fps: int, bitrate: int,
        gop: float, honor_pli: bool = True, loop_seconds: float = 4.0,
    ) -> dict[str, Any]:
        """Publish `mode` "loop" (pre-encoded, cheap, no send times) or "live" (stamped now)."""
        info: dict[str, Any] = {}
        if mode == "loop":
            frames = await asyncio.to_thread(encode_loop, width, height, fps, bitrate, loop_seconds, gop)
            video: Any = LoopTrack(frames, fps)
            info = {"loop_frames": len(frames), "video_bps": sum(map(len, frames)) * 8 * fps / len(frames)}
        elif mode == "live":
            self.live = LiveVideo(width, height, fps, bitrate, gop)
            video = self.live.subscribe()
        else:
            raise ValueError(f"mode must be 'loop' or 'live', not {mode!r}")
        self.whip = WhipClient(url, [video, ToneTrack()], video_codec="VP8", ice_servers=[])
        await self.whip.start()
        if self.live and honor_pli:
            self._route_keyframe_requests(self.whip.pc)
        await wait_connected(self.whip.pc, CONNECT_TIMEOUT)
        return info

    def _route_keyframe_requests(self, pc: RTCPeerConnection) -> None:
        assert self.live is not None
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                aiortc_patch.on_keyframe_request(transceiver.sender, self.live.request_keyframe)

    async def direct_offer(self) -> dict[str, Any]:
        """An offer for a video-only peer connection straight to a viewer (live mode)."""
        if self.live is None:
            raise RuntimeError("the direct leg needs a live publisher")
        self.direct = RTCPeerConnection()
        self.direct.addTransceiver(self.live.subscribe(), direction="sendonly")
        self._route_keyframe_requests(self.direct)
        await self.direct.setLocalDescription(await self.direct.createOffer())
        return {"sdp": self.direct.localDescription.sdp}

    async def direct_answer(self, sdp: str) -> dict[str, Any]:
        assert self.direct is not None
        await self.direct.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        await wait_connected(self.direct, CONNECT_TIMEOUT)
        return {}

    async def stats(self) -> dict[str, Any]:
        return {"keyframes": self.live.keyframes if self.live else None}

    async def close(self) -> None:
        if self.live:
            self.live.stop()
        if self.direct:
            await self.direct.close()
        if self.whip:
            await self.whip.close()


async def main() -> None:
    loopback_only()
    publisher = Publisher()
    await serve(
        {"start": publisher.start, "direct_offer": publisher.direct_offer,
         "direct_answer": publisher.direct_answer, "stats": publisher.stats},
        publisher.close,
    )


if __name__ == "__main__":
    asyncio.run(main())
