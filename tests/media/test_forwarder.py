"""The forwarder's per-viewer packet rewrite, keyframe starts, NACK answers and reconnect continuity.

Each viewer has a real SRTP session; its socket is a list: these tests check
the bytes a viewer would get, unprotected and parsed back with aiortc's own RTP
parser. The ICE socket is covered end to end in tests/server.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from relay.media.aiortc_patch import SendPath
from relay.media.forwarder import URI_ABS_SEND_TIME, URI_MID, Forwarder, Output, State
from relay.media.meter import RateMeter

from .samples import encode_av1, encode_vp9, packetize_av1, packetize_vp9

VP8_KEY = bytes([0x10, 0x00]) + bytes(100)  # S=1, PID 0; VP8 header P bit clear
VP8_DELTA_START = bytes([0x10, 0x01]) + bytes(100)  # P bit set
VP8_MORE = bytes([0x00, 0x55]) + bytes(100)  # S=0: a frame's later partition data


class Viewer:
    def __init__(self, extensions: dict[str, int], rtx: bool = True) -> None:
        self.sent: list[bytes] = []
        self.key = os.urandom(30)
        policy = Policy(key=self.key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
        policy.allow_repeat_tx = True  # as aiortc's: a plain retransmission repeats a sequence number
        srtp = Session(policy)
        self.path = SendPath(
            ssrc=0xCAFE, rtx_ssrc=0xBEEF, payload_type=120, rtx_payload_type=121 if rtx else None, mid="v",
            extensions=extensions, srtp=srtp,
            sendto=lambda data, addr: self.sent.append(bytes(data)), addr=("192.0.2.9", 9),
        )
        params = RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u)
                                                    for u, i in extensions.items()])
        self.map = HeaderExtensionsMap()
        self.map.configure(params)

    def packets(self) -> list[RtpPacket]:
        """What was sent, unprotected (each packet on its own: a retransmission repeats one)."""
        return [RtpPacket.parse(Session(Policy(key=self.key, ssrc_type=Policy.SSRC_ANY_INBOUND)).unprotect(data),
                                self.map) for data in self.sent]


class Recorder:
    def __init__(self, answers: bool = True) -> None:
        self.requests: list[str] = []
        self.answers = answers
        self.keyframes = 0

    def forwarder(self, kind: str = "video", clock_rate: int = 90000, replay: int = 20_000_000) -> Forwarder:
        def keyframe() -> None:
            self.keyframes += 1
        forwarder = Forwarder(kind, clock_rate, RateMeter(), self.requests.append, lambda: self.answers,
                              keyframe, replay)
        forwarder.attach("VP8" if kind == "video" else "opus")
        return forwarder


def join(forwarder: Forwarder, viewer: Viewer) -> Output:
    out = Output(forwarder)
    forwarder.add(out)
    forwarder.ready(out, viewer.path)
    return out


async def test_each_viewer_gets_its_own_header_and_only_what_it_negotiated() -> None:
    rec = Recorder()
    fw = rec.forwarder()
    a = Viewer({URI_MID: 3, URI_ABS_SEND_TIME: 5})
    b = Viewer({URI_MID: 1})
    out_a, out_b = join(fw, a), join(fw, b)
    assert rec.requests == ["viewer joined", "viewer joined"]
    fw.on_packet(65533, 1000, 1, VP8_DELTA_START)
    assert not a.sent and not b.sent, "a viewer starts on a keyframe, never mid-GOP"
    payloads = [VP8_KEY, VP8_MORE, VP8_MORE, VP8_DELTA_START]
    for i, (seq, payload) in enumerate(zip((65534, 65535, 0, 1), payloads)):
        fw.on_packet(seq, 4000 + 3000 * (i // 3), int(i == 2), payload)
    assert rec.keyframes == 1 and out_a.state is State.LIVE and out_b.state is State.LIVE
    for viewer, out in ((a, out_a), (b, out_b)):
        got = viewer.packets()
        assert [p.payload for p in got] == payloads
        assert {p.ssrc for p in got} == {0xCAFE} and {p.payload_type for p in got} == {120}
        assert [p.sequence_number for p in got] == [(out.next_seq + i) & 0xFFFF for i in range(4)]
        assert [p.marker for p in got] == [0, 0, 1, 0]
        first = got[0].timestamp
        assert [(p.timestamp - first) & 0xFFFFFFFF for p in got] == [0, 0, 0, 3000]
        assert {p.extensions.mid for p in got} == {"v"}
    assert all(p.extensions.abs_send_time is not None for p in a.packets())
    assert all(p.extensions.abs_send_time is None for p in b.packets()), "b did not negotiate abs-send-time"
    assert out_a.packets == 4 and out_a.octets == sum(len(p) for p in payloads) and out_a.frames == 1
    assert out_a.ts_off != out_b.ts_off or out_a.seq_off != out_b.seq_off


async def test_a_nack_is_answered_from_the_cache_as_rtx_or_as_the_packet() -> None:
    rec = Recorder()
    fw = rec.forwarder()
    rtx, plain = Viewer({URI_MID: 1}), Viewer({URI_MID: 1}, rtx=False)
    out_rtx, out_plain = join(fw, rtx), join(fw, plain)
    fw.on_packet(100, 0, 0, VP8_KEY)
    fw.on_packet(101, 0, 1, VP8_MORE)
    fw.on_packet(103, 3000, 1, VP8_DELTA_START)  # 102 lost on the publisher's leg
    lost = (101 + out_rtx.seq_off) & 0xFFFF
    out_rtx.retransmit(lost)
    resent = rtx.packets()[-1]
    assert resent.ssrc == 0xBEEF and resent.payload_type == 121
    assert resent.payload == lost.to_bytes(2, "big") + VP8_MORE, "RTX carries the viewer's original seq"
    assert resent.timestamp == rtx.packets()[1].timestamp and resent.marker == 1
    out_plain.retransmit((101 + out_plain.seq_off) & 0xFFFF)
    again, original = plain.packets()[-1], plain.packets()[1]
    assert again.payload == VP8_MORE and again.sequence_number == original.sequence_number
    sent = len(rtx.sent)
    out_rtx.retransmit((102 + out_rtx.seq_off) & 0xFFFF)
    assert len(rtx.sent) == sent and rec.requests == ["viewer joined"] * 2, \
        "a packet the publisher's leg lost may still come: no keyframe request"
    out_rtx.retransmit((50 + out_rtx.seq_off) & 0xFFFF)
    assert rec.requests[-1] == "NACK for a packet no longer cached"


async def test_joiners_after_a_recent_keyframe_start_from_the_cache_without_a_request() -> None:
    rec = Recorder()
    fw = rec.forwarder()
    fw.on_packet(1, 0, 1, VP8_KEY)
    for n in range(2, 12):
        fw.on_packet(n, 3000 * n, 1, VP8_DELTA_START)
    viewers = [Viewer({URI_MID: 1}) for _ in range(4)]
    outs = [join(fw, v) for v in viewers]  # a flash crowd, right after a keyframe
    assert rec.requests == [], "one recent keyframe serves every joiner: nothing to ask for"
    await asyncio.sleep(0.05)  # 11 packets of 102 bytes at 20 Mbit/s: under a millisecond
    fw.on_packet(12, 36000, 1, VP8_DELTA_START)
    for viewer, out in zip(viewers, outs):
        got = viewer.packets()
        assert out.state is State.LIVE and len(got) == 12 and got[0].payload == VP8_KEY
        assert [p.sequence_number for p in got] == [(out.next_seq + i) & 0xFFFF for i in range(12)]
        stamps = [p.timestamp for p in got]
        assert all((b - a) & 0xFFFFFFFF < 0x80000000 and a != b for a, b in zip(stamps, stamps[1:]))
        assert (stamps[-1] - stamps[-2]) & 0xFFFFFFFF == 3000, "live packets keep their spacing"
        assert (stamps[-2] - stamps[0]) & 0xFFFFFFFF < 3000 * 10, "the replay is retimed as a fast-forward"


async def test_an_old_keyframe_makes_joiners_wait_and_one_keyframe_starts_them_all() -> None:
    rec = Recorder()
    fw = rec.forwarder()
    fw.on_packet(1, 0, 1, VP8_KEY)
    fw.keyframe_at = time.time() - 5  # the GOP is 5 s old, and the publisher answers requests
    viewers = [Viewer({URI_MID: 1}) for _ in range(4)]
    outs = [join(fw, v) for v in viewers]
    assert all(out.state is State.WAITING for out in outs) and fw.waiting()
    fw.on_packet(2, 3000, 1, VP8_DELTA_START)
    assert not any(v.sent for v in viewers)
    fw.on_packet(3, 6000, 1, VP8_KEY)
    assert rec.keyframes == 2 and not fw.waiting()
    assert all(len(v.sent) == 1 and out.state is State.LIVE for v, out in zip(viewers, outs))


@pytest.mark.parametrize("kind", ["video", "audio"])
async def test_a_new_publisher_continues_the_viewers_numbering(kind: str) -> None:
    rec = Recorder()
    clock = 90000 if kind == "video" else 48000
    fw = rec.forwarder(kind, clock)
    viewer = Viewer({URI_MID: 1})
    out = join(fw, viewer)
    first = VP8_KEY if kind == "video" else b"\x01" * 50
    fw.on_packet(500, 10_000, 1, first)
    fw.on_packet(501, 13_000, 1, first)
    fw.detach()  # the publisher left; the viewer stays
    assert out.state is State.WAITING
    await asyncio.sleep(0.2)
    fw.attach("VP8" if kind == "video" else "opus")
    if kind == "video":
        fw.on_packet(9000, 777_000, 1, VP8_DELTA_START)  # the new publisher, mid-GOP: not sent
    fw.on_packet(9001, 780_000, 1, first)
    got = viewer.packets()
    assert [p.sequence_number for p in got] == [(out.next_seq - 2 + i) & 0xFFFF for i in range(3)], \
        "the sequence continues without a jump"
    elapsed = (got[2].timestamp - got[1].timestamp) & 0xFFFFFFFF
    assert 0.2 * clock <= elapsed < 1.5 * clock, "timestamps advance by the wall time that passed"
    assert out.packets == 3


async def test_viewers_waiting_for_an_unanswered_keyframe_start_from_the_cache() -> None:
    rec = Recorder()
    fw = rec.forwarder()
    fw.on_packet(1, 0, 1, VP8_KEY)
    fw.on_packet(2, 3000, 1, VP8_DELTA_START)
    fw.keyframe_at = time.time() - 5  # an old GOP, and a publisher believed to answer requests
    viewer = Viewer({URI_MID: 1})
    out = join(fw, viewer)
    assert out.state is State.WAITING and rec.requests == ["viewer joined"]
    fw.keyframe_unanswered()  # the stream's PLI timeout: no keyframe came
    await asyncio.sleep(0.05)
    assert out.state is State.LIVE and not fw.waiting()
    assert [p.payload for p in viewer.packets()] == [VP8_KEY, VP8_DELTA_START]


def vp9_packets() -> tuple[list[bytes], list[bytes]]:
    key, delta = encode_vp9(160, 120, 2)
    return (packetize_vp9(key, 1, keyframe=True, size=(160, 120), mtu=400),
            packetize_vp9(delta, 2, keyframe=False, mtu=400))


def av1_packets() -> tuple[list[bytes], list[bytes]]:
    key, delta = encode_av1(160, 120, 2)
    return packetize_av1(key, keyframe=True, mtu=400), packetize_av1(delta, keyframe=False, mtu=400)


@pytest.mark.parametrize("codec,packets", [("VP9", vp9_packets), ("AV1", av1_packets)])
async def test_a_viewer_waits_for_the_first_packet_of_a_keyframe(
        codec: str, packets: Callable[[], tuple[list[bytes], list[bytes]]]) -> None:
    key_packets, delta_packets = packets()
    rec = Recorder()
    fw = rec.forwarder()
    fw.attach(codec)
    viewer = Viewer({URI_MID: 1})
    out = join(fw, viewer)
    for seq, payload in enumerate(key_packets[1:] + delta_packets):  # joined after the keyframe began
        fw.on_packet(seq, 0 if seq < len(key_packets) - 1 else 3000, 0, payload)
    assert out.state is State.WAITING and not viewer.sent and rec.keyframes == 0
    for seq, payload in enumerate(key_packets, start=100):
        fw.on_packet(seq, 6000, int(seq == 99 + len(key_packets)), payload)
    assert rec.keyframes == 1 and out.state is State.LIVE
    assert [p.payload for p in viewer.packets()] == key_packets
