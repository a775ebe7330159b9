"""WHEP (draft-ietf-wish-whep-04): a viewer's session and the endpoint that creates it."""

from __future__ import annotations

from aiohttp import web
from aiortc import RTCDataChannel

from relay.config import Config
from relay.media.stream import Stream
from relay.media.viewer import Viewer
from relay.sdp import CODEC_HINT, CODEC_MIME, Offer, accepts, offered_names
from relay.server import limits
from relay.server.auth import presented_token
from relay.server.context import context
from relay.server.edge import EDGE
from relay.server.endpoint import created, read_offer, stream_name
from relay.server.events import stream_events_link
from relay.server.problems import Problem
from relay.server.proxy import base_path
from relay.server.session import Session, Sessions

RETRY_AFTER = 2
# Set on a request that is a worker's pull (worker mode), by the middleware that routes requests to workers.
RELAY_PULL = "relay_pull"


class ViewerSession(Session):
    kind = "whep"

    def __init__(self, sessions: Sessions, stream: Stream, config: Config, address: str) -> None:
        super().__init__(sessions, stream.name, config, address)
        self.stream = stream
        self.viewer: Viewer | None = None

    async def negotiate(self, offer: Offer) -> str:
        """Subscribe to the stream (sendonly senders, its codecs pinned), then answer."""
        self.viewer = self.stream.subscribe(self.pc, offer.kinds(), self._on_stream_ended)
        return await self.answer(offer)

    def on_connected(self) -> None:
        if self.viewer is None:
            return
        if limits.viewers_full(self.stream, self.config.limits):  # others connected first
            self.spawn(self.close("the stream has its maximum of viewers"))
        else:
            self.stream.viewer_connected(self.viewer)

    def _on_stream_ended(self) -> None:
        if not self.closed:
            self.spawn(self.close("stream ended"))

    def on_datachannel(self, channel: RTCDataChannel) -> None:
        self.stream.add_channel(channel, self.id, publisher=False)

    def on_close(self) -> None:
        if self.viewer is not None:
            self.stream.unsubscribe(self.viewer)


def check_codecs(offer: Offer, stream: Stream) -> None:
    """A viewer must take the stream's codec as it is: nothing is transcoded."""
    for media in offer.media:
        source = stream.tracks.get(media.kind)
        if source is not None and not accepts(media, CODEC_MIME[source.codec], source.profile):
            carried = (f"H.264 of profile-level-id {source.profile} with packetization-mode=1 (that profile at "
                       "that level or above, or with level-asymmetry-allowed=1)" if source.profile
                       else CODEC_HINT[CODEC_MIME[source.codec].lower()])
            raise Problem(422, "unsupported-codec",
                          f"stream {stream.name!r} carries {media.kind} as {carried}; offer it (the offer has "
                          f"{offered_names(media)})")
    if not any(media.kind in stream.tracks for media in offer.media):
        raise Problem(422, "no-common-media",
                      f"stream {stream.name!r} has {' and '.join(stream.tracks) or 'no media yet'}; "
                      f"the offer asks only for {' and '.join(offer.kinds())}")


async def post(request: web.Request) -> web.Response:
    ctx = context(request)
    name = stream_name(request)
    offer = await read_offer(request, ViewerSession.kind)
    edge = request.app.get(EDGE)
    if edge is None:
        return await join(request, name, offer)
    if not request.get(RELAY_PULL):
        limits.admit_pending(ctx.sessions, request.remote or "unknown", ctx.config.limits)  # before any pull
    async with edge.pulled(name, presented_token(request)):
        return await join(request, name, offer)


async def join(request: web.Request, name: str, offer: Offer) -> web.Response:
    """A viewer session on the stream `name` as carried here."""
    ctx = context(request)
    stream = ctx.streams.get(name)
    if stream is None or not stream.live:
        raise Problem(409, "stream-offline",
                      f"stream {name!r} has no live publisher; retry after {RETRY_AFTER} s",
                      headers={"Retry-After": str(RETRY_AFTER), "Link": stream_events_link(name, base_path(request))})
    check_codecs(offer, stream)
    address = request.remote or "unknown"
    if not request.get(RELAY_PULL):  # every worker pulls from one address, all at once when a stream starts
        limits.admit_pending(ctx.sessions, address, ctx.config.limits)
    limits.admit_viewer(stream, ctx.config.limits)
    session = ViewerSession(ctx.sessions, stream, ctx.config, address)
    answer = await session.negotiate_or_close(offer)
    if request.get(RELAY_PULL) and session.viewer is not None:
        stream.relays.add(session.viewer)  # a worker's pull: its viewers are counted instead
    session.start()
    return created(request, session, answer, [stream_events_link(name, base_path(request))])
