"""WHEP (draft-ietf-wish-whep-04): a viewer's session and the endpoint that creates it."""

from __future__ import annotations

from aiohttp import web

from . import aiortc_patch, limits
from .config import Config
from .context import context
from .endpoint import created, read_offer, stream_name
from .events import stream_events_link
from .forward import ViewerTrack
from .problems import Problem
from .sdp import CODEC_HINT, CODEC_MIME, Offer, accepts, capabilities, offered_names
from .session import Session, Sessions
from .stream import Stream

RETRY_AFTER = 2


class ViewerSession(Session):
    kind = "whep"

    def __init__(self, sessions: Sessions, stream: Stream, config: Config) -> None:
        super().__init__(sessions, stream.name, config)
        self.stream = stream
        self.tracks: list[ViewerTrack] = []
        self._queue_frames = config.forwarding.viewer_queue_frames
        self._replay_bitrate = config.forwarding.gop_replay_bitrate

    async def negotiate(self, offer: Offer) -> str:
        """Answer sendonly with the stream's own codecs pinned, one ViewerTrack per kind."""
        for media in offer.media:
            source = self.stream.tracks.get(media.kind)
            if source is None:
                continue
            # Start from the cached GOP only when asking for a keyframe would not bring one soon.
            replay = 0 if self.stream.answers_keyframe_requests else self._replay_bitrate
            track = ViewerTrack(self.stream.fanouts[media.kind], self._queue_frames,
                                self.stream.request_keyframe, replay)
            track.on("ended", self._on_track_ended)
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            mime = CODEC_MIME[source.codec]
            transceiver.setCodecPreferences(capabilities(mime))
            aiortc_patch.use_packer(transceiver.sender, mime)
            aiortc_patch.on_keyframe_request(
                transceiver.sender, lambda: self.stream.request_keyframe("viewer PLI/FIR")
            )
            aiortc_patch.on_nack_received(transceiver.sender, self.stream.count_nack_received)
            self.tracks.append(track)
        answer = await self.answer(offer.sdp)
        self.stream.add_viewer(self)
        return answer

    def _on_track_ended(self) -> None:
        if not self.closed:
            self.spawn(self.close("stream ended"))

    def on_close(self) -> None:
        self.stream.remove_viewer(self)
        for track in self.tracks:
            track.stop()


def check_codecs(offer: Offer, stream: Stream) -> None:
    """A viewer must take the stream's codec as it is: nothing is transcoded."""
    for media in offer.media:
        source = stream.tracks.get(media.kind)
        if source is not None and not accepts(media, CODEC_MIME[source.codec]):
            raise Problem(422, "unsupported-codec",
                          f"stream {stream.name!r} carries {media.kind} as "
                          f"{CODEC_HINT[CODEC_MIME[source.codec].lower()]}; offer it (the offer has "
                          f"{offered_names(media)})")
    if not any(media.kind in stream.tracks for media in offer.media):
        raise Problem(422, "no-common-media",
                      f"stream {stream.name!r} has {' and '.join(stream.tracks) or 'no media yet'}; "
                      f"the offer asks only for {' and '.join(offer.kinds())}")


async def post(request: web.Request) -> web.Response:
    ctx = context(request)
    name = stream_name(request)
    offer = await read_offer(request, ViewerSession.kind)
    stream = ctx.streams.get(name)
    if stream is None or not stream.live:
        raise Problem(409, "stream-offline",
                      f"stream {name!r} has no live publisher; retry after {RETRY_AFTER} s",
                      headers={"Retry-After": str(RETRY_AFTER), "Link": stream_events_link(name)})
    check_codecs(offer, stream)
    with limits.admit_viewer(request, stream):
        session = ViewerSession(ctx.sessions, stream, ctx.config)
        try:
            answer = await session.negotiate(offer)
        except Exception as exc:
            await session.close("negotiation failed")
            raise Problem(400, "negotiation-failed", f"the offer could not be applied: {exc}") from None
    session.start()
    return created(session, answer, ctx.config, [stream_events_link(name)])
