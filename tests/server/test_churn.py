"""200 viewers join and leave: afterwards no session is left and the server's memory is where it was."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from pathlib import Path

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import Stamp, TestPatternTrack, latency_ms, wall_ms

from ..conftest import RelayProcess, first_stamp, spawn_relay

WARM_UP, VIEWERS, AT_ONCE = 200, 200, 8  # RSS grows over the first ~300 joins (allocator warm-up), then stays flat
RSS_TOLERANCE = 0.05


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def sessions(server: RelayProcess) -> int:
    with urllib.request.urlopen(server.url("/readyz"), timeout=5) as response:
        return int(json.load(response)["sessions"])


async def settle(server: RelayProcess, expected: int) -> None:
    async with asyncio.timeout(15):
        while await asyncio.to_thread(sessions, server) != expected:
            await asyncio.sleep(0.1)


async def churn(server: RelayProcess, video: TestPatternTrack, count: int) -> list[tuple[Stamp, int]]:
    """`count` viewers, AT_ONCE at a time: each joins, sees a stamped frame, and leaves (1 in 4 without DELETE).

    Returns each viewer's first stamp with the number of frames the publisher had sent by then.
    """
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(i: int) -> tuple[Stamp, int]:
        async with gate:
            viewer = WhepClient(server.url("/whep/churn"), kinds=("video",))
            await viewer.start()
            try:
                stamp = await first_stamp(viewer)
                return stamp, video.frames_sent
            finally:
                if i % 4 == 3:
                    viewer.location = None  # vanish: close the peer connection, never DELETE
                await viewer.close()

    return await asyncio.gather(*(one(i) for i in range(count)))


async def test_viewer_churn_leaves_no_sessions_and_no_memory(tmp_path: Path) -> None:
    server = spawn_relay(tmp_path, {"limits": {"requests_per_second": 0}})
    try:
        video, published = TestPatternTrack(160, 120), wall_ms()
        async with WhipClient(server.url("/whip/churn"), [video]):
            await churn(server, video, WARM_UP)
            await settle(server, 1)
            await asyncio.sleep(1)  # deferred cleanup that nothing reports: a quiet second before sampling
            before = rss_kib(server.process.pid)
            seen = await churn(server, video, VIEWERS)
            await settle(server, 1)
            await asyncio.sleep(1)  # the same quiet second before the second sample
            after = rss_kib(server.process.pid)
        await settle(server, 0)
        print(f"server RSS after {WARM_UP} warm-up viewers: {before} KiB; after {VIEWERS} more: {after} KiB "
              f"({(after - before) / before:+.1%})")
        assert len(seen) == VIEWERS
        for stamp, sent in seen:  # every viewer saw a frame this publisher really sent, its stamp intact
            assert stamp.counter < sent and latency_ms(stamp, published) <= 0 <= latency_ms(stamp), (stamp, sent)
        assert abs(after - before) <= RSS_TOLERANCE * before
    finally:
        server.stop(signal.SIGKILL)
