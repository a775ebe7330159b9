"""Benchmark load viewers only: take a connected peer's ICE socket away from aiortc.

Product code never does this, so it lives with the benchmark; like every touch
of aiortc internals it relies on the versions `relay.media.aiortc_patch`
checks at import.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection

from relay.media.aiortc_patch import AIOICE_VERSION, AIORTC_VERSION

# Written against aiortc 1.16.0 and aioice 0.13.0. A stock aiortc receiver
# spends about 100 us per packet (a STUN parse attempt, SRTP unprotect, RTP
# parse, routing, jitter buffer, decoder thread), so a load generator built on
# it, not Relay, would set the viewer limit. After the handshake the load
# viewer reads the ICE socket itself: RTP headers are in the clear in SRTP, so
# it counts packets, frames and sequence gaps without decrypting, and decrypts
# only a sample to prove the packets are authentic.


@dataclass
class MediaSocket:
    """A connected peer's ICE socket, taken away from aiortc after the handshake."""

    sock: socket.socket  # a non-blocking duplicate of aioice's socket; close it when done
    deliver: Callable[[bytes, tuple[Any, ...]], None]  # back to aioice/aiortc: STUN, DTLS, RTCP
    unprotect: Callable[[bytes], bytes]  # SRTP-decrypt one RTP datagram; raises if not authentic


def take_media_socket(pc: RTCPeerConnection) -> MediaSocket:
    """Stop aiortc reading `pc`'s nominated ICE socket and hand it over.

    `pc` must be connected (ICE and DTLS done) and bundled on one transport.
    aioice keeps sending through the same socket (consent checks), and every
    datagram given to `deliver` takes the stock path.
    """
    try:
        dtls = pc.getTransceivers()[0].receiver.transport
        connection = dtls.transport._connection  # rtcicetransport.py: the aioice Connection
        protocol = next(iter(connection._nominated.values())).protocol  # aioice StunProtocol
        rx_srtp = dtls._rx_srtp  # pylibsrtp Session keyed by the DTLS handshake
    except (AttributeError, IndexError, StopIteration) as exc:
        raise RuntimeError(
            f"take_media_socket needs a connected, bundled aiortc {AIORTC_VERSION} peer "
            f"connection on aioice {AIOICE_VERSION}: {exc!r}"
        ) from None
    transport = protocol.transport
    sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
    sock.setblocking(False)
    transport.pause_reading()
    return MediaSocket(sock, protocol.datagram_received, rx_srtp.unprotect)
