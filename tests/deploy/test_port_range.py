"""ice.port_range: every media socket of the server binds inside it; a full range is a 503, not a hang.

The server runs as a process of its own (aioice's sockets are process-wide), so its
sockets can be told apart from the test's clients' in /proc.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..conftest import assert_problem, first_stamp, make_offer, request, spawn_relay

LOW, HIGH = 20000, 20001  # below Linux's ephemeral ports (32768-60999), which the clients take


def udp_ports(pid: int) -> set[int]:
    """Local ports of the UDP sockets process `pid` holds (its fds' inodes in /proc/net/udp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if match := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(match.group(1))
    ports = set()
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].split(":")[1], 16))
    return ports


def candidate_ports(sdp: str) -> set[int]:
    return {int(line.split()[5]) for line in sdp.splitlines() if line.startswith("a=candidate:")}


async def test_media_sockets_stay_in_the_range_and_a_full_range_is_a_503(tmp_path: Path) -> None:
    server = spawn_relay(tmp_path, {"ice": {"port_range": [LOW, HIGH]}})
    try:
        async with WhipClient(server.url("/whip/cam"), [TestPatternTrack(320, 240), ToneTrack()]):
            async with WhepClient(server.url("/whep/cam")) as viewer:
                assert (await first_stamp(viewer)).counter >= 0
                answer = viewer.pc.remoteDescription.sdp
                assert candidate_ports(answer) and candidate_ports(answer) <= {LOW, HIGH}, answer
                assert udp_ports(server.process.pid) == {LOW, HIGH}  # one socket each: publisher, viewer

                response, body = await asyncio.wait_for(
                    request("POST", server.url("/whep/cam"), await make_offer("recvonly"),
                            **{"Content-Type": "application/sdp"}), timeout=10)
                assert_problem(response, body, 503, f"{LOW}-{HIGH}", "ice.port_range")
                assert int(response.headers["Retry-After"]) > 0
                assert udp_ports(server.process.pid) == {LOW, HIGH}  # the refused session left nothing bound

            async with WhepClient(server.url("/whep/cam")) as again:  # the viewer's port is free again
                assert (await first_stamp(again)).counter >= 0
    finally:
        assert server.stop() == 0
