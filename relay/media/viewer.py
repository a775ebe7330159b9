"""A viewer of a stream: one forwarded sender per kind, and what it was sent.

Each sender is aiortc's stock `RTCRtpSender` with a track that never yields
(it negotiates, and sends RTCP: SR, SDES, BYE); the stream's forwarders write
its RTP packets directly (`media.forwarder`). `Stream.subscribe` makes the
`Viewer` and adds its senders to the viewer's peer connection, so the HTTP
side only negotiates.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from aiortc import RTCPeerConnection

from relay.media import aiortc_patch
from relay.media.forwarder import Forwarder, Output
from relay.sdp import capabilities


class Viewer:
    """One viewer's outputs (one per kind), added to its peer connection as sendonly senders."""

    def __init__(self, forwarders: dict[str, Forwarder], on_end: Callable[[], None]) -> None:
        self.outputs = {kind: Output(forwarder) for kind, forwarder in forwarders.items()}
        self.connected = False  # set by the stream when the viewer's ICE is up
        self._on_end = on_end
        self._ended = False

    def add_senders(self, pc: RTCPeerConnection, codecs: dict[str, tuple[str, str | None]],
                    on_keyframe_request: Callable[[], None], on_nack: Callable[[], None]) -> None:
        """One sendonly transceiver per kind, the stream's codec (and H.264 profile) pinned, its packets forwarded."""
        for kind, out in self.outputs.items():
            forwarder = out.forwarder
            transceiver = pc.addTransceiver(aiortc_patch.ParkedTrack(kind), direction="sendonly")
            mime, profile = codecs[kind]
            transceiver.setCodecPreferences(capabilities(mime, profile))
            forwarder.add(out)
            aiortc_patch.forward_sender(transceiver.sender, out, partial(forwarder.ready, out),
                                        partial(forwarder.remove, out))
            aiortc_patch.on_keyframe_request(transceiver.sender, on_keyframe_request)

            def nacked(seq: int, out: Output = out) -> None:
                on_nack()
                out.retransmit(seq)

            aiortc_patch.on_retransmit_request(transceiver.sender, nacked)

    @property
    def frames_sent(self) -> int:
        return sum(out.frames for out in self.outputs.values())

    @property
    def bytes_sent(self) -> int:
        return sum(out.octets for out in self.outputs.values())

    def end(self) -> None:
        """The stream ended under this viewer (its publisher left for good)."""
        if not self._ended:
            self._ended = True
            self._on_end()

    def stop(self) -> None:
        for out in self.outputs.values():
            out.forwarder.remove(out)
