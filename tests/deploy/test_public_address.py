"""ice.public_addresses: a server behind 1:1 NAT announces the address clients reach it at.

The namespace plays the NAT: the server's interface has SERVER_IP only; iptables maps
PUBLIC_IP to it (DNAT in, SNAT out), and drops what a client sends to SERVER_IP directly,
as a real NAT's outside would never see it. Media flows only if the answer's candidates
carry PUBLIC_IP, in both modes: instead of the private address, and after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..conftest import first_stamp, spawn_relay
from .conftest import CLIENT_IP, SERVER_IP, require, run

PUBLIC_IP = "198.51.100.7"


def one_to_one_nat(iptables: str) -> None:
    run("ip", "route", "add", f"{PUBLIC_IP}/32", "dev", "rly1")  # the way out towards the public address
    run(iptables, "-t", "nat", "-A", "OUTPUT", "-d", PUBLIC_IP, "-p", "udp", "-j", "DNAT",
        "--to-destination", SERVER_IP)
    run(iptables, "-t", "nat", "-A", "POSTROUTING", "-s", SERVER_IP, "-p", "udp", "-j", "SNAT",
        "--to-source", PUBLIC_IP)
    run(iptables, "-A", "OUTPUT", "-s", CLIENT_IP, "-d", SERVER_IP, "-p", "udp", "-m", "conntrack",
        "--ctdir", "ORIGINAL", "--ctorigdst", SERVER_IP, "-j", "DROP")
    # Counters only, before any NAT: what the clients addressed, to which address.
    run(iptables, "-t", "raw", "-A", "OUTPUT", "-s", CLIENT_IP, "-d", PUBLIC_IP, "-p", "udp")
    run(iptables, "-t", "raw", "-A", "OUTPUT", "-s", CLIENT_IP, "-d", SERVER_IP, "-p", "udp")


def packets(iptables: str, table: str, chain: str, rule: int = 1) -> int:
    """Packets rule number `rule` of `chain` matched."""
    lines = run(iptables, "-t", table, "-L", chain, "-v", "-n", "-x").splitlines()
    return int(lines[1 + rule].split()[0])


def host_candidates(sdp: str) -> set[str]:
    return {line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:") and " typ host" in line}


@pytest.mark.parametrize("keep_private", [False, True], ids=["public-only", "public-and-private"])
async def test_media_flows_through_the_public_address(
        keep_private: bool, tmp_path: Path, test_network: None, pin_host_addresses: Callable[[str], None]) -> None:
    iptables = require("iptables")
    one_to_one_nat(iptables)
    pin_host_addresses(CLIENT_IP)
    server = spawn_relay(tmp_path, {"server": {"host": "0.0.0.0"}, "ice": {
        "host_addresses": [SERVER_IP], "public_addresses": [PUBLIC_IP], "keep_private_candidates": keep_private}})
    try:
        async with WhipClient(server.url("/whip/cam"), [TestPatternTrack(320, 240), ToneTrack()]) as publisher:
            async with WhepClient(server.url("/whep/cam")) as viewer:
                first = await first_stamp(viewer)
                async with asyncio.timeout(10):  # a third of a second of media at least (a joiner starts fast)
                    while (await first_stamp(viewer)).counter < first.counter + 10:
                        pass
                for client in (publisher, viewer):
                    answer = client.pc.remoteDescription.sdp
                    assert host_candidates(answer) == ({SERVER_IP, PUBLIC_IP} if keep_private else {PUBLIC_IP})
                    assert (f"c=IN IP4 {PUBLIC_IP}" in answer) != keep_private
        assert packets(iptables, "raw", "OUTPUT") > 20  # the clients' checks, media and RTCP went to PUBLIC_IP
        to_private = packets(iptables, "raw", "OUTPUT", 2)
        assert to_private == packets(iptables, "filter", "OUTPUT")  # none of what went to SERVER_IP got through
        assert (to_private > 0) == keep_private  # it was announced: the clients tried it, in vain
    finally:
        assert server.stop() == 0
