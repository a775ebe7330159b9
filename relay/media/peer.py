"""What every Relay peer connection shares, server and client alike.

WHIP and WHEP require max-bundle (RFC 9725 §4.4.1; aiortc defaults to
balanced). A receiver whose decoding is off still has a track whose `recv()`
returns only when the media ends (BYE, close): `until_media_ends` waits on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcrtptransceiver import RTCRtpTransceiver


def new_peer_connection(ice_servers: list[RTCIceServer]) -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


def transceiver_of(pc: RTCPeerConnection, track: MediaStreamTrack) -> RTCRtpTransceiver:
    """The transceiver that received `track` (aiortc's "track" event names only the track)."""
    return next(t for t in pc.getTransceivers() if t.receiver.track is track)


async def until_media_ends(track: MediaStreamTrack) -> None:
    """Return when a received track ends; with decoding off, `recv()` yields nothing before that."""
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass


class Tasks:
    """Tasks that live as long as their owner, which cancels them when it closes."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        """Cancel every task but the one running this (a task may close its owner)."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)
