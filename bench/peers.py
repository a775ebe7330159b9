"""What every benchmark role needs from aiortc: loopback-only ICE and a connected wait."""

from __future__ import annotations

import asyncio
import os

from aiortc import RTCPeerConnection

from relay.media import aiortc_patch

LOOPBACK = "127.0.0.1"
# A role started with this set offers that address instead (Janus's libnice will not pair with 127.0.0.1).
MEDIA_ADDRESS = "RELAY_BENCH_MEDIA_ADDRESS"


def loopback_only() -> None:
    """Offer only 127.0.0.1 host candidates, like the server's `ice.host_addresses`."""
    aiortc_patch.restrict_host_addresses([os.environ.get(MEDIA_ADDRESS) or LOOPBACK])


async def wait_connected(pc: RTCPeerConnection, timeout: float) -> None:
    """Until ICE and DTLS are up; a failed or slow connection raises."""
    async with asyncio.timeout(timeout):
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"peer connection {pc.connectionState}")
            await asyncio.sleep(0.01)
