"""A WHEP (draft-ietf-wish-whep-04) client: receives a stream, decoded or as encoded frames."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from relay.client.encoded import EncodedTrack
from relay.client.session import Client, ClientError, Reply, SessionError, first_codec, negotiated_codecs
from relay.media import aiortc_patch
from relay.media.peer import transceiver_of, until_media_ends
from relay.sdp import SDP, client_capabilities


class WhepClient(Client):
    """Receives a stream from a WHEP endpoint.

    By default `tracks` holds aiortc's decoded tracks by kind; aiortc decodes
    whether or not they are read, into unbounded queues, so read every kind
    asked for (or ask for fewer). With `encoded=True` nothing is decoded:
    `encoded` holds an `EncodedTrack` per kind whose `recv()` returns whole
    encoded frames (`EncodedFrame`).
    With `on_receiver`, each receiver is handed to it with its codec name
    instead (how an edge feeds a stream, exactly as a publisher's session
    does), and `tracks` ends the client when it ends.
    A server that answers with a counter-offer (406, WHEP §4.3) is followed.
    `data_channels=["telemetry", ...]` opens those data channels (the viewer
    opens them; Relay creates none): `await recv(label)` or
    `async for message in channels[label]` gives the publisher's messages in
    order, `send("chat", ...)` talks on the chat. `wait_connected()` also
    waits for them to open.
    """

    protocol = "WHEP"
    counter_offer_statuses = (406,)

    def __init__(
        self, url: str, kinds: tuple[str, ...] = ("video", "audio"), encoded: bool = False,
        on_receiver: Callable[[str, RTCRtpReceiver, str], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(url, **kwargs)
        self._kinds = kinds
        self._encoded = encoded
        self._on_receiver = on_receiver
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.encoded: dict[str, EncodedTrack] = {}
        self._payload_types: dict[str, dict[int, str]] = {}
        # Each stops one receiver's NACK retries: a packet still missing is asked for again, as
        # browsers do (aiortc alone asks again only when the next gap opens).
        self._nack_retries: list[Callable[[], None]] = []

    def _prepare(self) -> None:
        assert self.pc is not None
        for kind in self._kinds:
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            if not self._encoded and self._on_receiver is None:  # aiortc decodes: only what it can
                transceiver.setCodecPreferences(client_capabilities(kind))
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.tracks[track.kind] = track
        # Emitted inside setRemoteDescription, before any packet can arrive.
        assert self.pc is not None
        transceiver = transceiver_of(self.pc, track)
        if self._on_receiver is None:  # (an edge's stream retries its receivers' NACKs itself)
            self._nack_retries.append(aiortc_patch.retry_nacks(transceiver.receiver))
        if not self._encoded and self._on_receiver is None:
            return
        codecs = self._payload_types.get(str(transceiver.mid), {})
        if self._on_receiver is not None:
            codec = first_codec(codecs)
            if codec is not None:  # else the answer rejected this kind: nothing will arrive
                self._on_receiver(track.kind, transceiver.receiver, codec)
                self.spawn(self._end_with(track))
            return
        encoded = EncodedTrack(track.kind, transceiver.receiver, codecs)
        self.encoded[track.kind] = encoded
        aiortc_patch.tap_receiver(transceiver.receiver, encoded.on_packet)
        self.spawn(self._until_media_ends(track, encoded))

    async def _end_with(self, track: MediaStreamTrack) -> None:
        await until_media_ends(track)
        self.ended.set()

    @staticmethod
    async def _until_media_ends(track: MediaStreamTrack, encoded: EncodedTrack) -> None:
        try:
            await until_media_ends(track)
        finally:
            encoded.end()

    async def close(self) -> None:
        for stop in self._nack_retries:
            stop()
        self._nack_retries.clear()
        await super().close()

    async def _apply_answer(self, answer: str) -> None:
        self._payload_types = negotiated_codecs(answer)
        await super()._apply_answer(answer)

    def _counter_offer_ok(self, reply: Reply) -> bool:
        return reply.headers.get("Content-Type", "").split(";")[0].strip() == SDP and bool(reply.body)

    async def _accept_counter_offer(self, offer: str) -> None:
        """The server sent its own offer (WHEP §4.3.2): answer it on a fresh peer connection."""
        assert self.pc is not None and self.location is not None
        old, self.pc = self.pc, self._new_peer_connection()
        await old.close()
        self.pc.on("track", self._on_track)
        self._payload_types = negotiated_codecs(offer)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            for transceiver in self.pc.getTransceivers():
                transceiver.direction = "recvonly"
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as exc:
            raise ClientError(f"the counter-offer from {self.url} cannot be used: {exc}") from None
        self._learn_codecs(offer)
        await self._request("PATCH", self.location, self.pc.localDescription.sdp, SDP)

    async def wait_track(self, kind: str, timeout: float | None = None) -> MediaStreamTrack:
        """The received track of `kind`, once the answer has produced it."""
        async with asyncio.timeout(timeout or self.timeout):
            while kind not in self.tracks:
                if self.ended.is_set():
                    raise ClientError(f"{self.url} sent no {kind}")
                await asyncio.sleep(0.02)
        return self.tracks[kind]


async def start_when_live(
    make: Callable[[], WhepClient],
    deadline: float | None = None,
    max_wait: float = 5.0,
    on_retry: Callable[[SessionError], None] | None = None,
) -> WhepClient:
    """Start clients from `make()` until the server takes one.

    409 (no live publisher yet, WHEP §4.3.8) and 503 (busy) are retried after
    the server's Retry-After, at most `max_wait` s, until `deadline`
    (time.monotonic(); None: forever).
    """
    while True:
        client = make()
        try:
            await client.start()
            return client
        except SessionError as exc:
            if exc.status not in (409, 503) or (deadline is not None and time.monotonic() >= deadline):
                raise
            if on_retry:
                on_retry(exc)
            await asyncio.sleep(min(exc.retry_after or 1.0, max_wait))
