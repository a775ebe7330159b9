"""A stream's RTP packets of one kind, to every viewer: packets, not frames.

Each publisher packet (after SRTP and RTX unwrap, before anything is
depacketized) comes here once. For each viewer that has started, its header
is rebuilt with that viewer's SSRC, payload type, sequence and timestamp
offsets and header extensions, protected with the viewer's SRTP context and
written to its ICE socket, synchronously: no per-viewer task, queue, RtpPacket
or re-packetization. Everything per viewer is computed once, when it starts:
each viewer has a buffer of its own holding its header extensions, where a
packet's header and payload are written, protected in place by libsrtp and
sent from (no bytes object is made per packet per viewer).

A viewer starts (and, after a publisher's reconnect, resumes) on a keyframe
seen at packet level, or at once from the packets since the last keyframe,
replayed as a paced fast-forward, when that keyframe is recent or the
publisher does not answer keyframe requests. A per-stream packet cache answers
viewers' NACKs.
"""

from __future__ import annotations

import asyncio
import enum
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from relay.media.aiortc_patch import SendPath, ntp_time, srtp_buffer, srtp_context, srtp_length, srtp_protect
from relay.media.bitstream import av1_packet_keyframe, h264_packet_keyframe, vp8_packet_keyframe, vp9_packet_keyframe
from relay.media.meter import RateMeter
from relay.media.packet_cache import CachedPacket, PacketCache

_HEADER = struct.Struct("!BBHII0s0s0s")  # a viewer without header extensions
_MASK32 = 0xFFFFFFFF
URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

# A joiner starts from the cached packets since the last keyframe, instead of
# asking for a new one, when that keyframe is at most this old (seconds).
RECENT_KEYFRAME = 1.0
# A GOP longer than this is not kept for joiners (about 10 s at 1 Mbps, or 8 MB).
GOP_MAX_PACKETS = 4000
GOP_MAX_BYTES = 8 * 1024 * 1024
# Replay timers fire at most this early: a packet due within it goes now.
REPLAY_SLACK = 0.002
# The largest payload a viewer's buffer takes, with the longest header and SRTP's trailer.
MAX_PAYLOAD = 4096 - 256


def _extension_block(path: SendPath, video: bool) -> tuple[bytes, bytes, bool]:
    """The one-byte header extension block (RFC 8285) a viewer negotiated: (head, tail, abs-send-time).

    Only `sdes:mid` and (video) `abs-send-time` are written, as the stock
    sender does; the abs-send-time value (3 bytes, per packet) goes between
    head and tail (without it, head is the whole block). Every other
    publisher extension is dropped.
    """
    elements = b""
    mid_id = path.extensions.get(URI_MID)
    if mid_id and path.mid:
        mid = path.mid.encode()
        elements += bytes([(mid_id << 4) | (len(mid) - 1)]) + mid
    abs_id = path.extensions.get(URI_ABS_SEND_TIME) if video else None
    if abs_id:
        elements += bytes([(abs_id << 4) | 2])
    size = len(elements) + (3 if abs_id else 0)
    if not size:
        return b"", b"", False
    words = (size + 3) // 4
    head = struct.pack("!HH", 0xBEDE, words) + elements
    if not abs_id:
        return head + bytes(words * 4 - size), b"", False
    return head, bytes(words * 4 - size), True


class State(enum.Enum):
    NEW = "new"  # its DTLS is not up yet
    WAITING = "waiting"  # for a start point: a keyframe (video), any packet (audio)
    REPLAY = "replay"  # sending the cached GOP, paced, then what came meanwhile
    LIVE = "live"
    CLOSED = "closed"


class Output:
    """One viewer's sender of one kind, as the forwarder sees it: everything precomputed."""

    __slots__ = (
        "forwarder", "state", "session", "srtp", "cdata", "buf", "head_into", "head_len", "sendto", "addr",
        "ssrc", "pt", "b0", "ext", "ext_tail",
        "rtx_ssrc", "rtx_pt", "rtx_seq", "seq_off", "ts_off", "next_seq", "next_ts", "next_time",
        "_packets", "_octets", "_frames", "_base", "schedule", "replay_start", "replay_bytes", "timer",
        "retransmits", "errors", "__weakref__",
    )

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.state = State.NEW
        self.session: Any = None
        self.srtp: Any = None
        self.cdata, self.buf = srtp_buffer()
        self.head_into = _HEADER.pack_into
        self.head_len = 12
        self.sendto: Callable[[memoryview, tuple[str, int]], Any] = lambda data, addr: None
        self.addr: tuple[str, int] = ("", 0)
        self.ssrc = self.pt = self.b0 = 0
        self.ext = self.ext_tail = b""
        self.rtx_ssrc = 0
        self.rtx_pt: int | None = None
        self.rtx_seq = random.randrange(1 << 15)
        self.seq_off = self.ts_off = 0
        # Where this viewer's numbering continues: the lower half of the sequence
        # space keeps clear of SRTP's rollover guess (rtcrtpsender.py:55-65).
        self.next_seq = random.randrange(1 << 15)
        self.next_ts: int | None = None
        self.next_time = 0.0
        self._packets = self._octets = self._frames = 0
        self._base: tuple[int, int, int] | None = None  # the forwarder's counters when it went live
        self.schedule: deque[tuple[float, int, int, int, bytes]] = deque()
        self.replay_start = 0.0
        self.replay_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.retransmits = self.errors = 0

    def configure(self, path: SendPath) -> None:
        self.session, self.srtp = path.srtp, srtp_context(path.srtp)  # the context lives while the session does
        self.sendto, self.addr = path.sendto, path.addr
        self.ssrc, self.pt = path.ssrc, path.payload_type
        self.rtx_ssrc, self.rtx_pt = path.rtx_ssrc, path.rtx_payload_type
        self.ext, self.ext_tail, abs_send_time = _extension_block(path, self.forwarder.kind == "video")
        self.b0 = 0x90 if self.ext else 0x80
        # One call writes the whole header: the fixed part, the extension block, and
        # abs-send-time's 3 bytes in it (a "0s" field takes them and writes nothing).
        head = struct.Struct(f"!BBHII{len(self.ext)}s{3 if abs_send_time else 0}s{len(self.ext_tail)}s")
        self.head_into, self.head_len = head.pack_into, head.size

    def write(self, b1: int, seq: int, ts: int, ssrc: int, payload: bytes) -> None:
        """One packet to this viewer, outside the live path (replay, retransmission).

        The live path in `Forwarder.on_packet` is the same steps, inlined.
        """
        if len(payload) > MAX_PAYLOAD:
            self.errors += 1
            return
        abs3 = (int(time.time() * 262144) & 0xFFFFFF).to_bytes(3, "big")
        buf, h = self.buf, self.head_len
        self.head_into(buf, 0, self.b0, b1, seq, ts, ssrc, self.ext, abs3, self.ext_tail)
        buf[h:h + len(payload)] = payload
        length = self.forwarder.length
        length[0] = h + len(payload)
        if srtp_protect(self.srtp, self.cdata, length):
            self.errors += 1  # replayed, or the session is gone
            return
        try:
            self.sendto(buf[:length[0]], self.addr)
        except OSError:
            self.errors += 1

    def _counters(self) -> tuple[int, int, int]:
        if self._base is None:
            return self._packets, self._octets, self._frames
        fw, base = self.forwarder, self._base
        return (self._packets + fw.packets - base[0], self._octets + fw.octets - base[1],
                self._frames + fw.frames - base[2])

    @property
    def packets(self) -> int:
        return self._counters()[0]

    @property
    def octets(self) -> int:
        return self._counters()[1]

    @property
    def frames(self) -> int:
        return self._counters()[2]

    def go_live(self) -> None:
        fw = self.forwarder
        self.state = State.LIVE
        self._base = (fw.packets, fw.octets, fw.frames)

    def leave_live(self) -> None:
        self._packets, self._octets, self._frames = self._counters()
        self._base = None

    def count(self, payload: bytes, marker: int) -> None:
        """A packet sent outside the live path (replay, retransmission)."""
        self._packets += 1
        self._octets += len(payload)
        self._frames += marker

    def report_times(self) -> tuple[int, int]:
        """(NTP, RTP) of one instant in this viewer's timestamps: the publisher's SR mapping, offset.

        Before the publisher's first SR (or between publishers): now, and the
        newest timestamp advanced by the time since it came.
        """
        fw = self.forwarder
        if fw.sender_report is not None:
            ntp, rtp = fw.sender_report
            return ntp, (rtp + self.ts_off) & _MASK32
        now = time.time()
        if fw.last_seq >= 0:
            return ntp_time(now), (fw.last_ts + int((now - fw.last_time) * fw.clock_rate) + self.ts_off) & _MASK32
        if self.next_ts is not None:  # between publishers: where this viewer's clock would be now
            return ntp_time(now), (self.next_ts + int((now - self.next_time) * fw.clock_rate)) & _MASK32
        return ntp_time(now), 0  # nothing sent yet

    def retransmit(self, seq_out: int) -> None:
        self.forwarder.retransmit(self, seq_out)


class Forwarder:
    """The packets of one kind of one stream, to each viewer's output."""

    def __init__(
        self,
        kind: str,
        clock_rate: int,
        meter_out: RateMeter,
        request_keyframe: Callable[[str], None],
        answers_keyframe_requests: Callable[[], bool],
        on_keyframe: Callable[[], None],
        replay_bitrate: int,
    ) -> None:
        self.kind = kind
        self.clock_rate = clock_rate
        self.codec: str | None = None
        self._video = kind == "video"
        # The keyframe test of the publisher's codec, chosen once by attach() (VP8 until then).
        self._is_keyframe_start: Callable[[bytes, int], bool] = lambda payload, ts: vp8_packet_keyframe(payload)
        self._meter_out = meter_out
        self._request_keyframe = request_keyframe
        self._answers = answers_keyframe_requests
        self._on_keyframe = on_keyframe
        self._replay_bitrate = replay_bitrate
        self.outputs: set[Output] = set()
        self._live: tuple[Output, ...] = ()
        self._waiting: set[Output] = set()
        self._replaying: set[Output] = set()
        self.cache = PacketCache()
        self._gop: list[CachedPacket] = []
        self._gop_bytes = 0
        self.keyframe_at = -float("inf")  # time.time() of the last keyframe's first packet
        self._prev_ts = -1
        self.packets = self.octets = self.frames = 0
        self.last_seq, self.last_ts, self.last_time = -1, 0, 0.0
        self.sender_report: tuple[int, int] | None = None
        self.length = srtp_length()

    # -- the publisher ------------------------------------------------------------------

    def attach(self, codec: str) -> None:
        """A publisher sends this kind as `codec`; its outputs wait for its first start point."""
        self.codec = codec
        tests: dict[str, Callable[[bytes, int], bool]] = {
            "h264": self._h264_keyframe_start,
            "vp9": lambda payload, ts: vp9_packet_keyframe(payload),
            "av1": lambda payload, ts: av1_packet_keyframe(payload),
        }
        self._is_keyframe_start = tests.get(codec.lower(), lambda payload, ts: vp8_packet_keyframe(payload))

    def detach(self) -> None:
        """The publisher is gone: outputs keep their numbering and wait for the next one's start."""
        for out in list(self._live) + list(self._replaying):
            self._stop_replay(out)
            if self.last_seq >= 0:
                out.next_seq = (self.last_seq + 1 + out.seq_off) & 0xFFFF
                out.next_ts = (self.last_ts + out.ts_off) & _MASK32
                out.next_time = self.last_time
            out.leave_live()
            out.state = State.WAITING
            self._waiting.add(out)
        self._replaying.clear()
        self._set_live(())
        self.cache.clear()
        self._drop_gop()
        self.keyframe_at = -float("inf")
        self._prev_ts = -1
        self.last_seq = -1
        self.sender_report = None

    def on_sender_report(self, ntp: int, rtp: int) -> None:
        self.sender_report = (ntp, rtp)

    def on_packet(self, seq: int, ts: int, marker: int, payload: bytes) -> None:
        """One publisher packet: to every live viewer at once; kept for NACKs and joiners."""
        now = time.time()
        if self.last_seq < 0 or (seq - self.last_seq) & 0xFFFF < 0x8000:
            self.last_seq, self.last_ts, self.last_time = seq, ts, now
        entry = CachedPacket(seq, ts, marker, payload)
        if self._video:
            self.cache.put(entry)
            if self._is_keyframe_start(payload, ts):
                self._keyframe(entry, now)
            elif self._gop:
                self._keep(entry)
            self._prev_ts = ts
        elif self._waiting:
            self._start_waiting(entry, now)
        self.packets += 1
        self.octets += len(payload)
        self.frames += marker if self._video else 1  # an audio packet is a frame; its marker means a talkspurt
        live = self._live
        size = len(payload)
        if live and size <= MAX_PAYLOAD:
            m = 0x80 if marker else 0
            abs3 = (int(now * 262144) & 0xFFFFFF).to_bytes(3, "big")
            length, protect = self.length, srtp_protect
            for out in live:  # Output.write, inlined: this loop is the cost of a viewer
                buf, h = out.buf, out.head_len
                out.head_into(buf, 0, out.b0, m | out.pt, (seq + out.seq_off) & 0xFFFF,
                              (ts + out.ts_off) & _MASK32, out.ssrc, out.ext, abs3, out.ext_tail)
                buf[h:h + size] = payload
                length[0] = h + size
                if protect(out.srtp, out.cdata, length):
                    out.errors += 1
                    continue
                try:
                    out.sendto(buf[:length[0]], out.addr)
                except OSError:
                    out.errors += 1
            self._meter_out.add(size * len(live))
        if self._replaying:
            for out in tuple(self._replaying):
                self._schedule(out, entry, entry.ts)

    def _h264_keyframe_start(self, payload: bytes, ts: int) -> bool:
        kind = h264_packet_keyframe(payload)
        # An IDR starts the keyframe only if no SPS came before it in the same frame.
        return kind == 2 or (kind == 1 and ts != self._prev_ts)

    def _keyframe(self, entry: CachedPacket, now: float) -> None:
        """One keyframe starts every viewer waiting for it."""
        self._drop_gop()
        self._keep(entry)
        self.keyframe_at = now
        if self._waiting:
            self._start_waiting(entry, now)
        self._on_keyframe()

    def _keep(self, entry: CachedPacket) -> None:
        self._gop.append(entry)
        self._gop_bytes += len(entry.payload)
        if len(self._gop) > GOP_MAX_PACKETS or self._gop_bytes > GOP_MAX_BYTES:
            self._drop_gop()  # too long to replay: joiners wait for a keyframe

    def _drop_gop(self) -> None:
        self._gop, self._gop_bytes = [], 0

    def _start_waiting(self, entry: CachedPacket, now: float) -> None:
        for out in self._waiting:
            self._anchor(out, entry.seq, entry.ts, now)
            out.go_live()
        self._waiting.clear()
        self._set_live(tuple(o for o in self.outputs if o.state is State.LIVE))

    def _anchor(self, out: Output, seq: int, ts: int, now: float) -> None:
        """Offsets that make publisher packet (seq, ts) the viewer's next: fixed until the publisher changes.

        A first start picks a random timestamp origin; a resume continues the
        viewer's timestamps by the wall time that passed.
        """
        out.seq_off = (out.next_seq - seq) & 0xFFFF
        if out.next_ts is None:
            out.ts_off = random.randrange(1 << 32)
        else:
            out.ts_off = (out.next_ts + int((now - out.next_time) * self.clock_rate) - ts) & _MASK32

    def _set_live(self, live: tuple[Output, ...]) -> None:
        self._live = live

    # -- viewers --------------------------------------------------------------------------

    def add(self, out: Output) -> None:
        self.outputs.add(out)

    def ready(self, out: Output, path: SendPath) -> None:
        """The viewer's DTLS is up: start it now if it can, else at the next keyframe."""
        if out.state is not State.NEW:
            return
        out.configure(path)
        if self._can_replay() and (not self._answers() or time.time() - self.keyframe_at <= RECENT_KEYFRAME):
            self._start_replay(out)
            return
        out.state = State.WAITING
        self._waiting.add(out)
        if self._video:
            self._request_keyframe("viewer joined")

    def keyframe_unanswered(self) -> None:
        """A keyframe asked for did not come in time: the viewers waiting for it start from the cache."""
        if self._can_replay():
            waiting, self._waiting = self._waiting, set()
            for out in waiting:
                self._start_replay(out)

    def _can_replay(self) -> bool:
        return self._video and bool(self._gop) and self._replay_bitrate > 0 and self.codec is not None

    def remove(self, out: Output) -> None:
        if out.state is State.LIVE:
            out.leave_live()
        self._stop_replay(out)
        out.state = State.CLOSED
        self.outputs.discard(out)
        self._waiting.discard(out)
        self._replaying.discard(out)
        if out in self._live:
            self._set_live(tuple(o for o in self._live if o is not out))

    def waiting(self) -> bool:
        """Some viewer waits for a keyframe (the keyframe requester retries while one does)."""
        return bool(self._waiting) and self._video

    def retransmit(self, out: Output, seq_out: int) -> None:
        """A viewer's NACK: the packet again, rewritten (as RTX if it negotiated RTX)."""
        if out.state not in (State.LIVE, State.REPLAY):
            return
        seq = (seq_out - out.seq_off) & 0xFFFF
        entry = self.cache.get(seq)
        if entry is None:
            if self.cache.evicted(seq):
                self._request_keyframe("NACK for a packet no longer cached")
            return  # lost on the publisher's leg: forwarded when Relay's own NACK brings it
        m, ts = 0x80 if entry.marker else 0, (entry.ts + out.ts_off) & _MASK32
        if out.rtx_pt is not None:
            out.write(m | out.rtx_pt, out.rtx_seq, ts, out.rtx_ssrc, seq_out.to_bytes(2, "big") + entry.payload)
            out.rtx_seq = (out.rtx_seq + 1) & 0xFFFF
        else:
            out.write(m | out.pt, seq_out, ts, out.ssrc, entry.payload)
        out.retransmits += 1

    def end(self) -> None:
        """The stream is over: forget every output and the publisher's packets."""
        for out in list(self.outputs):
            self.remove(out)
        self.detach()
        self._waiting.clear()

    # -- the cached-GOP start ---------------------------------------------------------------

    def _start_replay(self, out: Output) -> None:
        """Send the packets since the last keyframe, paced, as a fast-forward that ends on live.

        Sent in one burst, a GOP of seconds overruns the viewer's socket buffer.
        Each frame is retimed to its send offset, ending at the newest frame's
        time, so the viewer plays the replay fast and lands on the live picture.
        """
        gop = self._gop
        first = gop[0]
        self._anchor(out, first.seq, first.ts, time.time())
        out.state = State.REPLAY
        out.replay_bytes = 0
        offsets = []
        for entry in gop:
            offsets.append(out.replay_bytes * 8 / self._replay_bitrate)
            out.replay_bytes += len(entry.payload)
        rel = [(entry.ts - first.ts) & _MASK32 for entry in gop]
        newest, retimed = rel[-1], [0] * len(gop)
        nxt = newest + 1
        prev_rel: int | None = None
        for i in range(len(gop) - 1, -1, -1):
            if rel[i] != prev_rel:  # a new frame (going back): its own time
                nxt = min(nxt - 1, newest - round((offsets[-1] - offsets[i]) * self.clock_rate))
                prev_rel = rel[i]
            retimed[i] = nxt
        for entry, offset, ts in zip(gop, offsets, retimed):
            out.schedule.append((offset, entry.seq, (first.ts + ts) & _MASK32, entry.marker, entry.payload))
        out.replay_start = asyncio.get_running_loop().time()
        self._replaying.add(out)
        self._drain(out)

    def _schedule(self, out: Output, entry: CachedPacket, ts: int) -> None:
        out.schedule.append((out.replay_bytes * 8 / self._replay_bitrate, entry.seq, ts, entry.marker, entry.payload))
        out.replay_bytes += len(entry.payload)
        if out.timer is None:
            self._drain(out)

    def _drain(self, out: Output) -> None:
        """Send what is due; a packet sent late moves the rest of the schedule, never bunches it."""
        out.timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        schedule = out.schedule
        while schedule and out.replay_start + schedule[0][0] <= now + REPLAY_SLACK:
            offset, seq, ts, marker, payload = schedule.popleft()
            out.replay_start = max(out.replay_start, now - offset)
            out.write((0x80 if marker else 0) | out.pt, (seq + out.seq_off) & 0xFFFF, (ts + out.ts_off) & _MASK32,
                      out.ssrc, payload)
            out.count(payload, marker)
        if schedule:
            out.timer = loop.call_at(out.replay_start + schedule[0][0], self._drain, out)
            return
        self._replaying.discard(out)
        out.go_live()
        self._set_live((*self._live, out))

    def _stop_replay(self, out: Output) -> None:
        if out.timer is not None:
            out.timer.cancel()
            out.timer = None
        out.schedule.clear()

