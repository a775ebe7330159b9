"""WHIP (RFC 9725): a publisher's session and the endpoint that creates it."""

from __future__ import annotations

from aiohttp import web
from aiortc.mediastreams import MediaStreamTrack

from relay.config import Config
from relay.media.peer import transceiver_of, until_media_ends
from relay.media.stream import Stream
from relay.sdp import CLOCK_RATES, CODEC_HINT, CODEC_MIME, Offer, capabilities, choose_codec, offered_names
from relay.server import limits
from relay.server.context import context
from relay.server.endpoint import created, read_offer, stream_name
from relay.server.problems import Problem
from relay.server.session import Session, Sessions


class PublisherSession(Session):
    kind = "whip"

    def __init__(self, sessions: Sessions, stream: Stream, config: Config, codecs: dict[str, str]) -> None:
        super().__init__(sessions, stream.name, config)
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

    def on_close(self) -> None:
        self.stream.stop(self)


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
    limits.admit_stream(ctx.streams, ctx.config.limits)
    stream = ctx.streams.get_or_create(name)
    if stream.live:
        raise Problem(409, "stream-live",
                      f"stream {name!r} already has a publisher; stop it (DELETE its session) or pick another name")
    session = PublisherSession(ctx.sessions, stream, ctx.config, codecs)
    stream.start(session)
    answer = await session.negotiate_or_close(offer)
    session.start()
    return created(session, answer, ctx.config, [])
