"""A WHIP or WHEP session: one peer connection, its lifetime and its candidates.

A session owns its peer connection and its tasks. It ends on DELETE, when
ICE fails or closes (consent freshness catches a peer that vanished), when
its media ends, or when ICE has not connected within `connect_timeout`; in
every case `close()` releases everything and unregisters it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from aiortc import RTCDataChannel, RTCIceServer, RTCSessionDescription
from aiortc.exceptions import OperationError
from aiortc.sdp import candidate_from_sdp

from relay.config import Config
from relay.media import aiortc_patch
from relay.media.peer import Tasks, new_peer_connection
from relay.sdp import Fragment, Offer
from relay.server.nat import announce_public
from relay.server.problems import Problem

log = logging.getLogger(__name__)

RECENTLY_CLOSED = 1024
NO_PORT_RETRY_AFTER = 5


def ice_servers(config: Config) -> list[RTCIceServer]:
    return [RTCIceServer(s.urls, s.username, s.credential) for s in config.ice.servers]


class OfferRejected(Exception):
    """aiortc refused the client's offer: a bad offer, not a fault of Relay's."""


class Session:
    kind = "session"

    def __init__(self, sessions: Sessions, stream_name: str, config: Config, address: str) -> None:
        self.id = sessions.id_prefix + secrets.token_urlsafe(18)
        self.etag = f'"{secrets.token_hex(8)}"'
        self.stream_name = stream_name
        self.pc = new_peer_connection(ice_servers(config))
        self.created = time.monotonic()
        self.connected_at: float | None = None
        self.closed = False
        self.address = address
        self.config = config
        self._sessions = sessions
        self._pending = True  # until ICE connects or the session ends (limits.admit_pending)
        sessions.opened(self)
        self._tasks = Tasks()
        self.pc.on("connectionstatechange", self._on_connection_state)
        self._data_channels = 0
        self.pc.on("datachannel", self._on_datachannel)

    @property
    def path(self) -> str:
        return f"/{self.kind}/{self.stream_name}/{self.id}"

    @property
    def state(self) -> str:
        return "closed" if self.closed else self.pc.connectionState

    def start(self) -> None:
        """Register the session once its answer is ready and start its clock."""
        self._sessions.add(self)
        self.spawn(self._expire_if_not_connected())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(coro)

    async def _expire_if_not_connected(self) -> None:
        timeout = self.config.ice.connect_timeout
        await asyncio.sleep(timeout)
        if self.pc.connectionState != "connected":
            await self.close(f"ICE did not connect within {timeout:g} s")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            self._settle()
            self.on_connected()
            self._sessions.connected(self)
        if state in ("failed", "closed") and not self.closed:
            self.spawn(self.close(f"connection {state}"))

    def on_connected(self) -> None:
        """Hook for subclasses: take a seat now that the peer proved itself."""

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        """The peer opened a data channel (only offers with an m=application section can)."""
        self._data_channels += 1
        if self.closed or self._data_channels > self.config.data.max_channels_per_session:
            channel.close()
        else:
            self.on_datachannel(channel)

    def on_datachannel(self, channel: RTCDataChannel) -> None:
        """Hook for subclasses: hand the channel to the stream."""
        channel.close()

    def _settle(self) -> None:
        """No longer pending: connected, or gone."""
        if self._pending:
            self._pending = False
            self._sessions.settled(self)

    async def negotiate(self, offer: Offer) -> str:
        """Set up what the session needs, apply `offer` and return the answer."""
        raise NotImplementedError

    async def negotiate_or_close(self, offer: Offer) -> str:
        """`negotiate`, closing the session on any failure.

        An offer aiortc refuses is the client's fault (400); anything else is
        Relay's own (the problem middleware logs it and answers 500).
        """
        try:
            return await self.negotiate(offer)
        except OfferRejected as exc:
            await self.close("offer rejected")
            raise Problem(400, "negotiation-failed", f"the offer could not be applied: {exc}") from None
        except BaseException:
            await self.close("negotiation failed")
            raise

    async def answer(self, offer: Offer) -> str:
        """Apply the client's offer and return our complete answer (all candidates in it).

        aiortc sees only the m= sections Relay answers; the rejected ones are put
        back into its answer, so every section of the client's offer is answered.
        """
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        except (ValueError, OperationError) as exc:  # aiortc's checks: credentials, fingerprint, codecs
            raise OfferRejected(str(exc)) from None
        aiortc_patch.answer_as_dtls_server(self.pc, {m.mid for m in offer.media if m.passive})
        aiortc_patch.answer_h264_as_offered(self.pc, {m.mid: m.codecs for m in offer.media})
        try:
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except aiortc_patch.NoMediaPort as exc:
            raise Problem(503, "no-media-port", f"{exc}: the server is full; retry after the Retry-After delay",
                          headers={"Retry-After": str(NO_PORT_RETRY_AFTER)}) from None
        return announce_public(offer.complete(self.pc.localDescription.sdp), self.config.ice)

    def is_ice_restart(self, ufrag: str | None, pwd: str | None) -> bool:
        """New ICE credentials in a PATCH mean a restart; the current ones are plain trickle."""
        remote = self.pc.remoteDescription.sdp if self.pc.remoteDescription else ""
        current = dict(
            line[2:].split(":", 1) for line in remote.splitlines()
            if line.startswith(("a=ice-ufrag:", "a=ice-pwd:"))
        )
        return (ufrag is not None and ufrag != current.get("ice-ufrag")) or (
            pwd is not None and pwd != current.get("ice-pwd"))

    async def add_candidates(self, fragment: Fragment) -> int:
        """Add trickled candidates; lines aiortc cannot take are skipped, never fatal."""
        mid = next((t.mid for t in self.pc.getTransceivers() if t.mid is not None), None)
        added = 0
        for line in fragment.candidates:
            try:
                candidate = candidate_from_sdp(line.split(":", 1)[1])
                candidate.sdpMid = mid  # max-bundle: every candidate is for the first m-line
                await self.pc.addIceCandidate(candidate)
                added += 1
            except Exception as exc:  # malformed lines from real clients (see docs)
                log.debug("session %s: candidate %r skipped: %s", self.id, line, exc)
        return added

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        log.info("%s session %s on %r closed: %s", self.kind, self.id, self.stream_name, reason)
        self._sessions.remove(self)
        self._settle()
        self.on_close()
        self._tasks.cancel()
        await self.pc.close()

    def on_close(self) -> None:
        """Hook for subclasses: detach from the stream."""


class Sessions:
    """Every live session by id: the counts tests and metrics read."""

    def __init__(self) -> None:
        self.id_prefix = ""  # a worker's sessions name it ("w1."), so the main process routes to it
        self._by_id: dict[str, Session] = {}
        # Some clients close their peer connection before they DELETE: that
        # DELETE still deserves a 200, so closed sessions are remembered a while.
        self._closed: OrderedDict[str, tuple[str, str]] = OrderedDict()
        # Told once per session when it first connects (metrics time the join).
        self.connected_listeners: list[Callable[[Session], None]] = []
        # Sessions whose ICE has not connected yet, by client address and in all.
        self.pending: Counter[str] = Counter()
        self.pending_total = 0

    def opened(self, session: Session) -> None:
        self.pending[session.address] += 1
        self.pending_total += 1

    def settled(self, session: Session) -> None:
        self.pending[session.address] -= 1
        if not self.pending[session.address]:
            del self.pending[session.address]
        self.pending_total -= 1

    def add(self, session: Session) -> None:
        self._by_id[session.id] = session

    def connected(self, session: Session) -> None:
        for listener in list(self.connected_listeners):
            listener(session)

    def remove(self, session: Session) -> None:
        if self._by_id.pop(session.id, None) is not None:
            self._closed[session.id] = (session.kind, session.stream_name)
            while len(self._closed) > RECENTLY_CLOSED:
                self._closed.popitem(last=False)

    def recently_closed(self, kind: str, stream_name: str, session_id: str) -> bool:
        return self._closed.get(session_id) == (kind, stream_name)

    def get(self, kind: str, stream_name: str, session_id: str) -> Session | None:
        session = self._by_id.get(session_id)
        if session and session.kind == kind and session.stream_name == stream_name:
            return session
        return None

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_id.values()))

    def count(self, kind: str) -> int:
        return sum(1 for s in self._by_id.values() if s.kind == kind)

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(s.close(reason) for s in self), return_exceptions=True)
