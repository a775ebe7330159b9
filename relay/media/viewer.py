"""A viewer of a stream: the tracks its stock RTCRtpSenders pull, and what they were sent.

A viewer's sender pulls `av.Packet`s from a `ViewerTrack` and re-packetizes
them with `Encoder.pack()`; nothing is decoded or encoded. `Stream.subscribe`
makes the `Viewer` and adds its senders to the viewer's peer connection, so
the HTTP side only negotiates.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import av
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from relay.media import aiortc_patch
from relay.media.fanout import FanOut, MediaFrame
from relay.media.gated_queue import GatedQueue
from relay.sdp import capabilities


class Viewer:
    """One viewer's tracks (one per kind), added to its peer connection as sendonly senders."""

    def __init__(self, tracks: dict[str, ViewerTrack], on_end: Callable[[], None]) -> None:
        self.tracks = tracks
        self.connected = False  # set by the stream when the viewer's ICE is up
        self._on_end = on_end
        for track in tracks.values():
            track.on("ended", on_end)

    def add_senders(self, pc: RTCPeerConnection, codecs: dict[str, tuple[str, str | None]],
                    on_keyframe_request: Callable[[], None], on_nack: Callable[[], None]) -> None:
        """One sendonly transceiver per track, the stream's codec (and H.264 profile) pinned and nothing to encode."""
        for kind, track in self.tracks.items():
            mime, profile = codecs[kind]
            transceiver = pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(capabilities(mime, profile))
            aiortc_patch.use_packer(transceiver.sender, mime)
            aiortc_patch.on_keyframe_request(transceiver.sender, on_keyframe_request)
            aiortc_patch.on_nack_received(transceiver.sender, on_nack)

    @property
    def frames_sent(self) -> int:
        return sum(t.frames_sent for t in self.tracks.values())

    @property
    def bytes_sent(self) -> int:
        return sum(t.bytes_sent for t in self.tracks.values())

    def stop(self) -> None:
        for track in self.tracks.values():
            track.remove_listener("ended", self._on_end)
            track.stop()


class ViewerTrack(MediaStreamTrack):
    """What a viewer's stock RTCRtpSender pulls: the stream's frames as `av.Packet`s.

    It joins the fan-out on the sender's first `recv()`, so frames do not pile
    up while ICE and DTLS are still connecting.
    """

    def __init__(
        self,
        fanout: FanOut,
        max_queue: int,
        request_keyframe: Callable[[str], None],
        replay_bitrate: int = 0,
    ) -> None:
        super().__init__()
        self.kind = fanout.kind
        self._fanout = fanout
        self._request_keyframe = request_keyframe
        self._replay_bitrate = replay_bitrate
        self._replay: deque[float] = deque()  # send offsets of the replayed frames still queued
        self._replay_start = 0.0
        self._queue: GatedQueue[MediaFrame] = GatedQueue(
            fanout.kind == "video", max_queue, lambda: request_keyframe("viewer queue overflow")
        )
        self._joined = False
        self.frames_sent = 0
        self.bytes_sent = 0

    @property
    def waiting_keyframe(self) -> bool:
        return self._queue.waiting_keyframe

    @waiting_keyframe.setter
    def waiting_keyframe(self, value: bool) -> None:
        self._queue.waiting_keyframe = value

    @property
    def overflows(self) -> int:
        return self._queue.overflows

    def push(self, frame: MediaFrame) -> None:
        self._queue.push(frame, frame.keyframe)

    def end(self) -> None:
        """The stream is over: the sender's next `recv()` raises and it stops."""
        self.stop()

    async def recv(self) -> av.Packet:
        if not self._joined and self.readyState == "live":
            self._join()
        frame = await self._queue.get()
        if self._replay:
            offset = self._replay.popleft()
            delay = self._replay_start + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # A frame sent late (a busy loop, a sleep that overran) moves the rest of the
            # schedule: catching up would send the overdue frames back to back, in one loop
            # iteration, at several times the replay bitrate, and overrun the viewer's socket.
            self._replay_start = max(self._replay_start, time.monotonic() - offset)
        self.frames_sent += 1
        self.bytes_sent += frame.size
        return frame.packet

    def _join(self) -> None:
        """Start from the stream's current GOP if there is one, else ask for a keyframe."""
        self._joined = True
        self._fanout.add(self)
        if self.kind != "video":
            return
        replay = self._fanout.replay(self._replay_bitrate)
        if replay:
            self._queue.prefill([frame for frame, _ in replay])
            self._replay.extend(offset for _, offset in replay)
            self._replay_start = time.monotonic()
        else:
            self._request_keyframe("viewer joined")

    def stop(self) -> None:
        super().stop()
        self._fanout.remove(self)
        self._queue.close(discard=True)
