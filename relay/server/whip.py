"""WHIP (RFC 9725): a publisher's session and the endpoint that creates it."""

from __future__ import annotations

import math

from aiohttp import web
from aiortc import RTCDataChannel
from aiortc.mediastreams import MediaStreamTrack

from relay.config import Config
from relay.media.peer import transceiver_of, until_media_ends
from relay.media.stream import Stream, Streams
from relay.sdp import CLOCK_RATES, CODEC_HINT, CODEC_MIME, Offer, capabilities, choose_codec, offered_names
from relay.server import limits
from relay.server.auth import required_token
from relay.server.context import context
from relay.server.endpoint import created, read_offer, stream_name
from relay.server.problems import Problem
from relay.server.session import Session, Sessions


class PublisherSession(Session):
    kind = "whip"

    def __init__(self, sessions: Sessions, streams: Streams, stream: Stream, config: Config,
                 codecs: dict[str, str], address: str) -> None:
        super().__init__(sessions, stream.name, config, address)
        self.streams = streams
        self.stream = stream
        self.codecs = codecs

    async def negotiate(self, offer: Offer) -> str:
        """Answer recvonly with the chosen codecs pinned before the offer is applied."""
        for kind, mime in self.codecs.items():
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            transceiver.setCodecPreferences(capabilities(mime))
        self.pc.on("track", self._on_track)
        return await self.answer(offer.sdp)

    def _on_track(self, track: MediaStreamTrack) -> None:
        # Emitted inside setRemoteDescription, before any packet can arrive.
        receiver = transceiver_of(self.pc, track).receiver
        mime = self.codecs[track.kind]
        self.stream.add_receiver(track.kind, receiver, mime.split("/")[1], CLOCK_RATES[track.kind])
        self.spawn(self._close_when_ended(track))

    async def _close_when_ended(self, track: MediaStreamTrack) -> None:
        await until_media_ends(track)
        await self.close(f"publisher's {track.kind} ended")

    def on_connected(self) -> None:
        if limits.streams_full(self.streams, self.config.limits):  # others connected first
            self.spawn(self.close("the server carries its maximum of live streams"))
        else:
            self.stream.publisher_connected(self)

    def on_datachannel(self, channel: RTCDataChannel) -> None:
        self.stream.add_channel(channel, self.id, publisher=True)

    def on_close(self) -> None:
        self.stream.stop(self)


async def take_over(stream: Stream, idle_limit: float, token_holder: bool) -> None:
    """Close the stream's publisher, if any, for a new one, or 409 saying when that will be possible.

    A crashed encoder or a half-open session would otherwise hold the name
    until ICE consent fails; a publisher that still sends media keeps it.
    """
    publisher, idle = stream.publisher, stream.idle_for()
    if publisher is None:
        return
    if token_holder or (idle_limit and idle >= idle_limit):
        why = "it presented the publish token" if token_holder else f"the old one sent nothing for {idle:.1f} s"
        await publisher.close(f"replaced by a new publisher: {why}")
        if stream.publisher is None:
            return
    detail = f"stream {stream.name!r} already has a publisher; stop it (DELETE its session) or pick another name"
    headers = {}
    if idle_limit and not stream.sending() and stream.publisher is publisher:  # crashed, or never sent
        wait = max(1, math.ceil(idle_limit - idle))
        detail += f"; if it has stopped sending, retry after {wait} s to replace it"
        headers["Retry-After"] = str(wait)
    raise Problem(409, "stream-live", detail, headers=headers)


def choose_codecs(offer: Offer, config: Config) -> dict[str, str]:
    codecs = {}
    for media in offer.media:
        preferred = config.codecs.video if media.kind == "video" else config.codecs.audio
        mime = choose_codec(media, preferred)
        if mime is None:
            wanted = " or ".join(CODEC_HINT[CODEC_MIME[n].lower()] for n in preferred) or "nothing"
            raise Problem(422, "unsupported-codec",
                          f"Relay takes {media.kind} as {wanted}; the offer has {offered_names(media)}")
        codecs[media.kind] = mime
    return codecs


async def post(request: web.Request) -> web.Response:
    ctx = context(request)
    name = stream_name(request)
    offer = await read_offer(request, PublisherSession.kind)
    codecs = choose_codecs(offer, ctx.config)
    address = request.remote or "unknown"
    limits.admit_pending(ctx.sessions, address, ctx.config.limits)
    limits.admit_stream(ctx.streams, ctx.config.limits)
    stream = ctx.streams.get_or_create(name)
    token_holder = required_token(ctx.config.auth, name, "publish") is not None  # checked by auth already
    await take_over(stream, ctx.config.forwarding.takeover_idle, token_holder)
    session = PublisherSession(ctx.sessions, ctx.streams, stream, ctx.config, codecs, address)
    stream.start(session)
    answer = await session.negotiate_or_close(offer)
    session.start()
    return created(session, answer, ctx.config, [])
