"""Worker processes (`relay serve --workers 2`) with real processes over loopback.

Which worker serves a viewer is read from its session id (the Location names
the worker: `/whep/cam/w1.…`) and cross-checked with `/metrics`, where each
process's `relay_viewers` carries its `process` label: each worker counts its
own viewers, and the main process counts one session per worker (its pull).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import aioice.ice
import pytest

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack
from relay.media import aiortc_patch

from ..conftest import RelayProcess, first_stamp, poll_until, request, spawn_relay, wait_ended
from .test_edge import viewers

CONSENT = 5.0  # the test's own peers notice a vanished server within about this long


def viewers_by_process(server: RelayProcess) -> dict[str, int]:
    with urllib.request.urlopen(server.url("/metrics"), timeout=5) as response:
        text = response.read().decode()
    return {m[1]: int(float(m[2])) for m in re.finditer(r'^relay_viewers\{process="(\w+)"\} (\S+)$', text, re.M)}


def worker_pids(server: RelayProcess) -> dict[int, int]:
    """The worker processes of `server`, pid by worker index (from their command lines)."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    pids = {}
    for pid in map(int, children):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--worker" in argv:
            pids[int(argv[argv.index(b"--worker") + 1])] = pid
    return pids


def worker_of(viewer: WhepClient) -> str:
    assert viewer.location is not None
    return viewer.location.rsplit("/", 1)[1].split(".")[0]


async def collect_advancing(viewer: WhepClient, frames: int = 10) -> None:
    first = await first_stamp(viewer)
    async with asyncio.timeout(10):
        while (await first_stamp(viewer)).counter < first.counter + frames:
            pass


@pytest.fixture
def quick_consent() -> Iterator[None]:
    """This process's peers notice a vanished server within CONSENT seconds (aioice's default: 30)."""
    saved = aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES
    aiortc_patch.set_consent_timeout(CONSENT)
    yield
    aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES = saved


@pytest.mark.usefixtures("quick_consent")
async def test_six_viewers_spread_over_two_workers_and_a_killed_worker_comes_back(tmp_path: Path) -> None:
    server = spawn_relay(tmp_path, {"workers": {"count": 2}})
    clients: list[WhepClient] = []
    try:
        async with WhipClient(server.url("/whip/cam"), [TestPatternTrack(320, 240), ToneTrack()]):
            for _ in range(6):
                viewer = WhepClient(server.url("/whep/cam"), kinds=("video",))
                clients.append(viewer)
                await viewer.start()
            assert Counter(worker_of(v) for v in clients) == {"w0": 3, "w1": 3}
            await asyncio.gather(*(first_stamp(v) for v in clients))
            await poll_until(lambda: viewers(server, "cam") == 6, timeout=10, interval=0.2)
            assert viewers_by_process(server) == {"main": 2, "w0": 3, "w1": 3}, "one pull per worker"

            killed = [v for v in clients if worker_of(v) == "w0"]
            kept = [v for v in clients if worker_of(v) == "w1"]
            old = worker_pids(server)
            os.kill(old[0], signal.SIGKILL)
            await poll_until(lambda: viewers(server, "cam") == 3, timeout=5, interval=0.2)
            await asyncio.gather(*(collect_advancing(v) for v in kept))  # the others keep playing
            async with asyncio.timeout(4 * CONSENT):  # told, through ICE consent: nothing hangs
                await asyncio.gather(*(wait_ended(v) for v in killed))
            await poll_until(lambda: worker_pids(server).get(0) not in (None, old[0]), timeout=10, interval=0.2)
            await poll_until(lambda: "w0" in viewers_by_process(server), timeout=10, interval=0.2)

            late = [WhepClient(server.url("/whep/cam"), kinds=("video",)) for _ in range(2)]
            clients += late
            for viewer in late:
                await viewer.start()
            assert {worker_of(v) for v in late} == {"w0", "w1"}, "the restarted worker takes viewers again"
            await asyncio.gather(*(first_stamp(v) for v in late))

            for viewer in kept + late:
                assert viewer.location is not None
                response, _ = await request("DELETE", urljoin(server.url("/"), viewer.location))
                assert response.status == 200, viewer.location
            await poll_until(lambda: viewers(server, "cam") == 0, timeout=10, interval=0.2)
    finally:
        await asyncio.gather(*(v.close() for v in clients))
        assert server.stop() == 0


async def test_sigterm_drains_every_worker_within_the_grace(tmp_path: Path) -> None:
    server = spawn_relay(tmp_path, {"workers": {"count": 2}})
    pids = worker_pids(server)
    assert sorted(pids) == [0, 1]
    async with WhipClient(server.url("/whip/cam"), [TestPatternTrack(320, 240)]):
        clients = [WhepClient(server.url("/whep/cam"), kinds=("video",)) for _ in range(2)]
        try:
            for viewer in clients:
                await viewer.start()
            assert {worker_of(v) for v in clients} == {"w0", "w1"}
            await asyncio.gather(*(first_stamp(v) for v in clients))
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.process.wait, 10)
            took = time.monotonic() - signalled
            assert code == 0 and took <= 5.0, f"exit {code} after {took:.1f} s"
            assert not any(Path(f"/proc/{pid}").exists() for pid in pids.values()), "a worker outlived the server"
            async with asyncio.timeout(3):  # the viewers were told
                await asyncio.gather(*(wait_ended(v) for v in clients))
        finally:
            await asyncio.gather(*(v.close() for v in clients))
