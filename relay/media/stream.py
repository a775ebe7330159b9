"""A named stream: its publisher's tapped media, its fan-outs, its viewers and its state.

Both sides join here: the publisher session hands each receiver to
`add_receiver`, a viewer session gets its senders from `subscribe`.
Viewers get the publisher's RTP packets through the stream's forwarders;
recorders get `MediaFrame`s. The forwarders outlive a publisher: one that
comes back within `reconnect_grace` with the same codecs takes over the
viewers where they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

from aiortc import RTCDataChannel, RTCPeerConnection, RTCRtpReceiver

from relay.config import ChatConfig, DataConfig, ForwardConfig
from relay.media import aiortc_patch
from relay.media.bitstream import video_size
from relay.media.chat import CHAT_LABEL, Chat
from relay.media.datachannels import StreamData
from relay.media.fanout import FanOut
from relay.media.forwarder import Forwarder
from relay.media.keyframes import KeyframeRequester
from relay.media.meter import RateMeter
from relay.media.tap import PublisherTap
from relay.media.viewer import Viewer
from relay.sdp import CLOCK_RATES, CODEC_MIME

log = logging.getLogger(__name__)

# A keyframe within this many seconds of a PLI answers it (libwebrtc: about
# one frame plus the round trip); the first PLI is sent this long after start.
PLI_ANSWER_WINDOW = 0.5
PLI_CHECK_DELAY = 1.5
PLI_TIMEOUT_SLACK = 0.05


class Publisher(Protocol):
    """Whoever holds the stream: a stale stop() is ignored, and a takeover closes it."""

    id: str

    async def close(self, reason: str) -> None: ...


class Stream:
    def __init__(self, name: str, config: ForwardConfig, on_change: Callable[[Stream], None],
                 data: DataConfig | None = None, chat: ChatConfig | None = None) -> None:
        self.name = name
        # Data channels and the chat (relay.media.datachannels, relay.media.chat): apart from the media.
        self.data = StreamData((data or DataConfig()).viewer_buffer_bytes)
        self.chat = Chat(name, chat or ChatConfig(), self.data)
        self.config = config
        self._on_change = on_change
        self.meter_in = RateMeter()
        self.meter_out = RateMeter()
        self.fanouts = {"video": FanOut("video"), "audio": FanOut("audio")}
        self.forwarders = {kind: Forwarder(kind, CLOCK_RATES[kind], self.meter_out, self.request_keyframe,
                                           lambda: self.answers_keyframe_requests, self._keyframe_arrived,
                                           config.gop_replay_bitrate)
                           for kind in ("video", "audio")}
        self._grace: asyncio.TimerHandle | None = None  # the viewers wait this long for a publisher
        self.tracks: dict[str, PublisherTap] = {}
        # The publisher holds the stream from its POST, but the stream is live
        # only once its ICE connects: a half-open session is never "live".
        self.publisher: Publisher | None = None
        self._publisher_connected = False
        self._claimed = 0.0
        self.viewers: set[Viewer] = set()
        # Worker mode: viewers that are a worker's pull of this stream, and the
        # viewers each worker serves from it (counted instead of its pull).
        self.relays: set[Viewer] = set()
        self.elsewhere: dict[str, int] = {}
        self.since: datetime | None = None
        self.size: tuple[int, int] | None = None
        self.nacks_sent = 0
        self.nacks_received = 0
        # Counts of publishers and viewers gone, so totals() never goes down.
        self._ended: Counter[str] = Counter()
        self.recording = False  # a file is being written
        self.recording_error: str | None = None  # why recording this stream last failed, until it works again
        # What others say about the stream in its description (its bots, the bot that makes it).
        self.notes: dict[str, Any] = {}
        self._receivers: dict[str, RTCRtpReceiver] = {}
        self._keyframes: KeyframeRequester | None = None
        self._started = 0.0
        # Does the publisher answer keyframe requests? Browsers do; an encoder
        # with a fixed keyframe interval does not, and then joiners are started
        # from the cached GOP instead of waiting for its next keyframe. Not
        # known (None) until a request was answered or not.
        self._pli_pending: float | None = None
        self._pli_answered: bool | None = None
        self._pli_check: asyncio.TimerHandle | None = None
        self._pli_timeout: asyncio.TimerHandle | None = None
        self._nack_retries: list[Callable[[], None]] = []  # each stops one receiver's NACK retries

    @property
    def live(self) -> bool:
        return self.publisher is not None and self._publisher_connected

    @property
    def watching(self) -> int:
        """Viewers whose ICE connected: the ones that hold a seat and count everywhere (workers' too)."""
        here = sum(1 for viewer in self.viewers if viewer.connected and viewer not in self.relays)
        return here + sum(self.elsewhere.values())

    def set_elsewhere(self, process: str, viewers: int) -> None:
        """`process` (a worker) serves `viewers` viewers of this stream from its own pull."""
        if self.elsewhere.get(process, 0) != viewers:
            if viewers:
                self.elsewhere[process] = viewers
            else:
                self.elsewhere.pop(process, None)
            self._on_change(self)

    def sending(self, within: float = 0.5) -> bool:
        """The current publisher sent media in the last `within` s (a live one does every 20-40 ms)."""
        last = self.meter_in.last_add
        return last is not None and last >= self._claimed and time.monotonic() - last < within

    def idle_for(self) -> float:
        """Seconds the current publisher has sent no media (since it took the stream, if it never did)."""
        return time.monotonic() - max(self._claimed, self.meter_in.last_add or 0.0)

    @property
    def packets_in(self) -> int:
        return self.meter_in.count

    @property
    def keyframe_requests(self) -> int:
        """Keyframe requests sent to every publisher this stream has had."""
        return self._ended["keyframe_requests"] + (self._keyframes.sent if self._keyframes else 0)

    @property
    def keyframe_reasons(self) -> dict[str, int]:
        return dict(self._keyframes.reasons) if self._keyframes else {}

    @property
    def answers_keyframe_requests(self) -> bool:
        if self._pli_pending is not None and time.monotonic() - self._pli_pending > PLI_ANSWER_WINDOW:
            return False  # asked, and no keyframe came in time
        return bool(self._pli_answered)  # unknown counts as no: a joiner starts from the cache at once

    def start(self, publisher: Publisher) -> None:
        """A publisher takes the stream; called before its offer is applied."""
        self._pli_check = asyncio.get_running_loop().call_later(
            PLI_CHECK_DELAY, self.request_keyframe, "check: does the publisher answer?")
        self.publisher = publisher
        self._claimed = time.monotonic()
        if self._grace is not None:  # a publisher came back: the viewers stay
            self._grace.cancel()
            self._grace = None
        self._keyframes = KeyframeRequester(
            self._send_pli,
            self._any_waiting,
            self.config.keyframe_min_interval,
            self.config.keyframe_retry_interval,
        )
        self._on_change(self)

    def publisher_connected(self, publisher: Publisher) -> None:
        """The publisher's ICE is up: from now on the stream is live."""
        if self.publisher is publisher and not self._publisher_connected:
            if any(forwarder.outputs and kind not in self.tracks for kind, forwarder in self.forwarders.items()):
                self._end_viewers()  # a publisher that came back without a kind its viewers watch
            self._publisher_connected = True
            self.since = datetime.now(UTC)
            self._started = time.monotonic()
            self._on_change(self)

    def _any_waiting(self) -> bool:
        return self.forwarders["video"].waiting() or self.fanouts["video"].any_waiting()

    def add_receiver(self, kind: str, receiver: RTCRtpReceiver, codec: str, clock_rate: int,
                     profile: str | None = None) -> None:
        """Any peer connection's receiver of `kind` feeds the stream (a WHIP publisher, a pulled stream).

        `profile` is H.264's profile-level-id, which viewers must take.
        """
        forwarder = self.forwarders[kind]
        if forwarder.outputs and forwarder.codec is not None and forwarder.codec.lower() != codec.lower():
            # The viewers negotiated the old codec: nothing is transcoded, so they end.
            self._end_viewers()
        forwarder.attach(codec)
        track = PublisherTap(kind, codec, clock_rate, self.fanouts[kind], forwarder, self.meter_in,
                             self.config.hole_wait, self.video_keyframe, self.request_keyframe)
        track.profile = profile
        self.tracks[kind] = track
        self._receivers[kind] = receiver
        aiortc_patch.tap_receiver(receiver, track.on_packet)
        aiortc_patch.on_sender_report(receiver, forwarder.on_sender_report)
        aiortc_patch.on_nack_sent(receiver, self._count_nacks_sent)
        self._nack_retries.append(aiortc_patch.retry_nacks(receiver))

    def _keyframe_arrived(self) -> None:
        if self._keyframes:
            self._keyframes.keyframe_arrived()

    def _count_nacks_sent(self, packets: int) -> None:
        self.nacks_sent += packets

    def count_nack_received(self) -> None:
        self.nacks_received += 1

    def stop(self, publisher: Publisher, wait_for_return: bool = True) -> None:
        """The publisher is gone: end every sink and go offline.

        The viewers wait `reconnect_grace` for a publisher to come back, unless
        `wait_for_return` is False (an edge's pull that its origin ended: nobody
        publishes on an edge, and the origin already kept its viewers waiting).
        """
        if self.publisher is not publisher:
            return
        if self._keyframes:
            self._keyframes.close()
            self._ended["keyframe_requests"] += self._keyframes.sent
        self._keyframes = None
        for timer in (self._pli_check, self._pli_timeout):
            if timer:
                timer.cancel()
        self._pli_check, self._pli_timeout, self._pli_pending, self._pli_answered = None, None, None, None
        self.publisher = None
        self._publisher_connected = False
        for stop_retries in self._nack_retries:
            stop_retries()
        self._nack_retries = []
        self.tracks = {}
        self._receivers = {}
        self.size = None
        self.since = None
        for fanout in self.fanouts.values():
            for sink in tuple(fanout.sinks):
                sink.end()
            fanout.reset()
        for forwarder in self.forwarders.values():
            forwarder.detach()  # the viewers keep their numbering, and wait
        grace = self.config.reconnect_grace
        if self.viewers and grace > 0 and wait_for_return:
            self._grace = asyncio.get_running_loop().call_later(grace, self._end_viewers)
        else:
            self._end_viewers()
        self._on_change(self)

    def _end_viewers(self) -> None:
        """No publisher came back in time, or it came back with another codec: the viewers end."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        for viewer in tuple(self.viewers):
            viewer.end()
        for forwarder in self.forwarders.values():
            forwarder.end()

    def request_keyframe(self, reason: str) -> None:
        if self._keyframes:
            self._keyframes.request(reason)

    def video_keyframe(self, codec: str, data: bytes) -> None:
        if self._pli_pending is not None:
            self._pli_answered = time.monotonic() - self._pli_pending <= PLI_ANSWER_WINDOW
            self._pli_pending = None
        size = video_size(codec, data)
        if size and size != self.size:
            self.size = size
            self._on_change(self)

    async def _send_pli(self) -> bool:
        track, receiver = self.tracks.get("video"), self._receivers.get("video")
        if track is None or receiver is None or track.ssrc is None:
            return False  # no video packet yet: the requester keeps the request
        await aiortc_patch.send_pli(receiver, track.ssrc)
        if self._pli_pending is None:
            self._pli_pending = time.monotonic()
            if self._pli_timeout:
                self._pli_timeout.cancel()
            self._pli_timeout = asyncio.get_running_loop().call_later(
                PLI_ANSWER_WINDOW + PLI_TIMEOUT_SLACK, self._pli_unanswered)
        return True

    def _pli_unanswered(self) -> None:
        """No keyframe came for the last request: whoever waits for one starts from the cached GOP."""
        self._pli_timeout = None
        if not self.answers_keyframe_requests:
            self.forwarders["video"].keyframe_unanswered()

    def set_recording(self, recording: bool, error: str | None = None) -> None:
        """Set by the recordings manager, so the API and live updates show it."""
        if (recording, error) != (self.recording, self.recording_error):
            self.recording, self.recording_error = recording, error
            self._on_change(self)

    def subscribe(self, pc: RTCPeerConnection, kinds: Iterable[str], on_end: Callable[[], None]) -> Viewer:
        """A viewer of the `kinds` this stream carries, its senders added to `pc`; counted from now on.

        `on_end` is called when the stream ends under the viewer (the publisher left).
        """
        forwarders = {kind: self.forwarders[kind] for kind in kinds if kind in self.tracks}
        viewer = Viewer(forwarders, on_end)
        viewer.add_senders(pc, {kind: (CODEC_MIME[self.tracks[kind].codec], self.tracks[kind].profile)
                                for kind in forwarders},
                           lambda: self.request_keyframe("viewer PLI/FIR"), self.count_nack_received)
        self.viewers.add(viewer)
        self._on_change(self)
        return viewer

    def viewer_connected(self, viewer: Viewer) -> None:
        """The viewer's ICE is up: it now holds a seat."""
        if viewer in self.viewers and not viewer.connected:
            viewer.connected = True
            self._on_change(self)

    def unsubscribe(self, viewer: Viewer) -> None:
        """The viewer left: stop its tracks and keep what it was sent in the totals."""
        viewer.stop()
        self.relays.discard(viewer)
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            self._ended.update(frames_out=viewer.frames_sent, bytes_out=viewer.bytes_sent)
            if not self.viewers and self._grace is not None:  # nobody left to keep for a publisher
                self._end_viewers()
            self._on_change(self)

    def add_channel(self, channel: RTCDataChannel, session: str, publisher: bool) -> None:
        """A data channel a session's peer opened: `chat` joins the chat, another label the data fan-out."""
        if channel.label == CHAT_LABEL:
            self.chat.add(channel, session, "publisher" if publisher else "viewer")
        elif publisher:
            self.data.add_publisher(channel)
        else:
            self.data.add_viewer(channel)

    def totals(self) -> Counter[str]:
        """Counters over this stream's life, for /metrics: read at scrape time, never per packet."""
        totals = Counter(self._ended)
        totals.update(data_in=self.data.messages_in, data_out=self.data.messages_out, data_dropped=self.data.dropped)
        for viewer in self.viewers:
            totals.update(frames_out=viewer.frames_sent, bytes_out=viewer.bytes_sent)
        totals.update(packets_in=self.packets_in, bytes_in=self.meter_in.total, nacks_sent=self.nacks_sent,
                      nacks_received=self.nacks_received,
                      keyframe_requests=self._keyframes.sent if self._keyframes else 0)
        return totals

    def describe(self) -> dict[str, Any]:
        """The stream as the JSON API and the dashboard show it."""
        video, audio = self.tracks.get("video"), self.tracks.get("audio")
        return {
            "name": self.name,
            "live": self.live,
            "since": self.since.isoformat().replace("+00:00", "Z") if self.since else None,
            "uptime_s": round(time.monotonic() - self._started, 1) if self.live else 0,
            "video": {
                "codec": video.codec,
                "width": self.size[0] if self.size else None,
                "height": self.size[1] if self.size else None,
            } if video else None,
            "audio": {"codec": audio.codec} if audio else None,
            "bitrate_in": self.meter_in.bps(),
            "bitrate_out": self.meter_out.bps(),
            "viewers": self.watching,
            "recording": self.recording,
            "recording_error": self.recording_error,
            "chat": self.chat.describe(),
            "data": self.data.describe(),
            **self.notes,
        }


class Streams:
    """Every stream by name; listeners hear of each change (for live updates).

    A stream that went offline stays listed (as offline) for `linger` seconds,
    so pages can show "offline" rather than nothing; at most `max_offline` are kept.
    """

    def __init__(self, config: ForwardConfig, linger: float = 300.0, max_offline: int = 256,
                 data: DataConfig | None = None, chat: ChatConfig | None = None) -> None:
        self._config = config
        self._data_config, self._chat_config = data, chat
        self._linger = linger
        self._max_offline = max_offline
        self._streams: dict[str, Stream] = {}
        self._offline_since: dict[str, float] = {}
        self.listeners: list[Callable[[Stream], None]] = []
        # Totals of streams already forgotten, so /metrics counters never go down.
        self.retired: Counter[str] = Counter()

    def get(self, name: str) -> Stream | None:
        return self._streams.get(name)

    def get_or_create(self, name: str) -> Stream:
        self._prune()
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = Stream(name, self._config, self._changed,
                                                  self._data_config, self._chat_config)
        return stream

    def __iter__(self) -> Iterator[Stream]:
        self._prune()
        return iter(list(self._streams.values()))

    def _changed(self, stream: Stream) -> None:
        if stream.publisher is not None or stream.viewers:
            self._offline_since.pop(stream.name, None)
        else:
            self._offline_since.setdefault(stream.name, time.monotonic())
        for listener in list(self.listeners):
            listener(stream)

    def _prune(self) -> None:
        expired = time.monotonic() - self._linger
        offline = sorted(self._offline_since.items(), key=lambda item: item[1])
        for i, (name, since) in enumerate(offline):
            if since < expired or i < len(offline) - self._max_offline:
                del self._offline_since[name]
                stream = self._streams.pop(name)
                self.retired.update(stream.totals())
                stream.data.close()
                stream.chat.close()

    def totals(self) -> Counter[str]:
        """Counters over every stream there has been."""
        totals = Counter(self.retired)
        for stream in self:
            totals.update(stream.totals())
        return totals
