"""ice.public_addresses rewrites the answer's host candidates; the media path is tested in tests/deploy."""

from __future__ import annotations

from relay.config import IceConfig
from relay.server.nat import announce_public

ANSWER = "\r\n".join([
    "v=0", "c=IN IP4 10.0.0.5", "m=video 40000 UDP/TLS/RTP/SAVPF 96",
    "a=candidate:aaaa 1 udp 2130706431 10.0.0.5 40000 typ host",
    "a=candidate:bbbb 1 udp 2130706175 fd00::5 40002 typ host",
    "a=candidate:cccc 1 udp 1694498815 203.0.113.50 40000 typ srflx raddr 10.0.0.5 rport 40000", "",
])


def candidates(sdp: str) -> list[tuple[str, int, str]]:
    return [(f[4], int(f[3]), f[7]) for f in (line.split() for line in sdp.splitlines() if line.startswith("a=cand"))]


def test_public_addresses_replace_the_private_host_candidates() -> None:
    sdp = announce_public(ANSWER, IceConfig(public_addresses=["198.51.100.7"]))
    assert candidates(sdp) == [("198.51.100.7", 2130706431, "host"), ("fd00::5", 2130706175, "host"),
                               ("203.0.113.50", 1694498815, "srflx")]  # IPv6 has no public address: kept
    assert "c=IN IP4 198.51.100.7" in sdp and "10.0.0.5 40000 typ host" not in sdp


def test_with_keep_private_candidates_they_come_after_the_private_ones() -> None:
    sdp = announce_public(ANSWER, IceConfig(public_addresses=["198.51.100.7", "2001:db8::7"],
                                            keep_private_candidates=True))
    assert candidates(sdp)[:4] == [("10.0.0.5", 2130706431, "host"), ("198.51.100.7", 2130706430, "host"),
                                   ("fd00::5", 2130706175, "host"), ("2001:db8::7", 2130706174, "host")]
    foundations = [line.split()[0] for line in sdp.splitlines() if line.startswith("a=candidate:")]
    assert len(set(foundations)) == len(foundations)
    assert "c=IN IP4 10.0.0.5" in sdp


def test_no_public_address_changes_nothing() -> None:
    assert announce_public(ANSWER, IceConfig()) == ANSWER
