"""The experiments: CPU and capacity sweeps, join time, flash crowds, relay-added latency, loss.

One `Rig` is a server under test (Relay, Janus or the MediaRelay baseline) pinned to
one core, plus a publisher, a probe (the measuring viewer) and load-generator
processes pinned to another. Every figure is taken from the server's
/proc/PID/stat over a timed window; forwarded packets are what the viewers
received in that window.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import av
import yaml

from .janus import facade, janus_binary, janus_process
from .netns import VETH_PEER_ADDRESS, packet_loss
from .peers import LOOPBACK, MEDIA_ADDRESS
from .proc import (
    Child,
    child_env,
    core_busy,
    core_times,
    cpu_seconds,
    cpu_times,
    pinned,
    rss_bytes,
)
from .stats import Line, percentile

FPS = 30
MIN_FPS = 29.0
MAX_LOSS = 0.01
MAX_FREEZE_MS = 250.0  # a freeze made up by a burst would still average 29 fps
SATURATED = 0.9  # our processes using this much of their core are the limit
NO_PROBE = {"fps": 0.0, "rtp_loss": 0.0, "missing_frames": 0, "max_gap_ms": None, "rtp_received": 0}
BUSY = 0.97  # a core this busy, whoever uses it, starves what we measure
LOOP_GOP = 1.0
# Janus's threading: None keeps its default (one event loop per handle), 1 shares one loop.
JANUS = {"janus": None, "janus-el1": 1}
SERVERS = ["relay", "janus", "janus-el1", "baseline"]


@dataclass(frozen=True)
class Size:
    name: str
    width: int
    height: int
    bitrate: int


SIZES = {s.name: s for s in (Size("480p", 640, 480, 1_000_000), Size("720p", 1280, 720, 2_500_000))}


@dataclass
class Plan:
    """How much to measure; `FULL` fills the table, `SHORT` proves the benchmark works."""

    sizes: list[str]
    relay_counts: list[int]  # viewers, the measuring one included
    baseline_counts: list[int]
    window: float
    settle: float
    gops: list[float]
    joins: int
    join_pause: float  # at least this long between joins, plus a random part of the GOP:
    join_spread: float  # up to this fraction of it (1: joins land anywhere in the GOP)
    ignore_pli_gops: list[float]  # Relay joins with a publisher that ignores PLI
    latency_seconds: float
    latency_load: list[int]
    load_processes: int
    janus_counts: list[int]
    crowd: int  # viewers joining at once
    crowd_rounds: int
    crowd_gops: list[float]
    loss: list[float]  # drop probabilities, on every UDP datagram delivered in the namespace
    loss_seconds: float
    loss_viewers: int  # the probe included
    servers: list[str] = field(default_factory=lambda: list(SERVERS))
    # Join, latency, crowd and loss experiments run on these only (Janus's one-loop variant
    # differs in threading, which the CPU sweeps measure).
    extras: list[str] = field(default_factory=lambda: ["relay", "janus", "baseline"])


FULL = Plan(  # about 15 minutes on 2 cores: every count and window is a compromise with that
    sizes=["480p", "720p"],
    relay_counts=[1, 16, 48, 96, 160, 256, 384, 512],
    baseline_counts=[1, 2, 4],
    window=4.0, settle=1.5,
    gops=[1.0, 4.0], joins=8, join_pause=0.3, join_spread=1.0, ignore_pli_gops=[1.0, 4.0],
    latency_seconds=6.0, latency_load=[0, 15],
    load_processes=4,
    janus_counts=[1, 16, 48, 96, 160, 256, 384, 512],
    crowd=32, crowd_rounds=1, crowd_gops=[1.0, 4.0],
    loss=[0.0, 0.02, 0.05], loss_seconds=10.0, loss_viewers=4,
)
SHORT = Plan(
    sizes=["480p"],
    relay_counts=[1, 6],
    baseline_counts=[1, 2],
    window=1.5, settle=1.0,
    gops=[1.0, 4.0], joins=3, join_pause=0.2, join_spread=0.1, ignore_pli_gops=[],
    latency_seconds=3.0, latency_load=[0],
    load_processes=2,
    janus_counts=[1, 6],
    crowd=4, crowd_rounds=1, crowd_gops=[1.0],
    loss=[0.0, 0.05], loss_seconds=3.0, loss_viewers=2,
    servers=["relay", "baseline"],  # Janus has its own smoke test (tests/bench/test_janus.py)
)


def cores() -> tuple[int | None, int | None]:
    """(server core, load core): different cores when there are two, no pinning otherwise."""
    usable = sorted(os.sched_getaffinity(0))
    return (usable[0], usable[1]) if len(usable) >= 2 else (None, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class Step:
    """One measurement window at a fixed viewer count."""

    viewers: int
    seconds: float
    server_cpu: float  # cores: CPU seconds per second
    server_kernel: float  # the part of server_cpu spent in the kernel (sendto on loopback)
    server_core_busy: float  # the server's core, whoever used it
    load_cpu: float  # publisher + probe + load generators, cores
    loadgen_us_per_packet: float  # the load generators' own CPU per received packet
    load_core_busy: float
    rss_mb: float
    packets_per_s: float  # RTP packets/s received by all viewers
    bits_per_s: float  # received by the load viewers, per viewer
    fps: float
    rtp_loss: float
    missing_frames: int
    probe_max_gap_ms: float | None  # the longest wait between two decoded frames (a freeze)
    load_loss: float
    silent: int  # load viewers that got no video in the window
    srtp_sampled: int
    srtp_authentic: int
    join_failures: int = 0

    @property
    def ok(self) -> bool:
        probe_ok = self.viewers == 0 or (
            self.fps >= MIN_FPS and self.rtp_loss < MAX_LOSS and (self.probe_max_gap_ms or 0) < MAX_FREEZE_MS
        )
        return probe_ok and self.silent == 0

    @property
    def forwarded_all(self) -> bool:
        """Every load viewer got video without loss (whatever the probe's decoder managed)."""
        return self.silent == 0 and self.load_loss < MAX_LOSS and not self.join_failures

    @property
    def limit(self) -> str:
        """Which side ran out of CPU, if any: ours first, then anyone else's on the cores."""
        if self.server_cpu >= SATURATED:
            return "server"
        if self.load_cpu >= SATURATED:
            return "load generator"
        if max(self.server_core_busy, self.load_core_busy) >= BUSY:
            return (f"other processes on the cores (server core {self.server_core_busy:.0%}, "
                    f"load core {self.load_core_busy:.0%} busy)")
        return ""


class Rig:
    """A server under test and the processes that load and measure it."""

    def __init__(self, kind: str, plan: Plan, log_dir: Path) -> None:
        self.kind = kind
        self.plan = plan
        self.log_dir = log_dir
        self.server_core, self.load_core = cores()
        self.port = free_port()
        self.server: asyncio.subprocess.Process | None = None
        self.publisher: Child | None = None
        self.probe: Child | None = None
        self.loads: list[Child] = []
        self.stream = ""
        self.loop_frames: int | None = None
        self.join_errors: list[str] = []
        self.recordings = log_dir / f"recordings-{kind}"
        self._janus = contextlib.AsyncExitStack()
        # Janus's peers offer the veth address: libnice's checks to 127.0.0.1 never succeed.
        self.env = {MEDIA_ADDRESS: VETH_PEER_ADDRESS} if kind in JANUS else {}

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    async def __aenter__(self) -> Rig:
        try:
            return await self._start()
        except BaseException:
            await self.__aexit__()  # whatever started is stopped: no orphaned server or child
            raise

    async def _start(self) -> Rig:
        if self.kind in JANUS:
            await self._start_janus()
        elif self.kind == "relay":
            config = self.log_dir / "relay.yaml"
            config.write_text(yaml.safe_dump({
                # Liveness is not what is measured either: on a loaded machine a starved publisher or
                # viewer answers consent checks late, and Relay's 10 s default would drop it mid-window.
                "ice": {"host_addresses": [LOOPBACK], "connect_timeout": 30.0, "consent_timeout": 60.0},
                # Admission control is not what is measured: hundreds of viewers join from one address.
                "limits": {"requests_per_second": 0, "max_viewers_per_stream": 0},
                "recording": {"dir": str(self.recordings)},
                "workers": {"count": 1},  # one process, pinned to the server core (bench/edge.py measures workers)
            }))
            argv = [sys.executable, "-m", "relay", "serve", "--config", str(config), "--port", str(self.port)]
        else:
            argv = [sys.executable, "-m", "bench.baseline", "--port", str(self.port),
                    "--recordings-dir", str(self.recordings)]
        if self.kind not in JANUS:
            with (self.log_dir / f"{self.kind}-server.log").open("ab") as log:
                self.server = await asyncio.create_subprocess_exec(
                    *pinned(self.server_core, argv), stdout=log, stderr=log, env=child_env(),
                )
        children = [
            Child.start(f"{self.kind}-probe", "bench.probe", [], self.load_core, self.log_dir, self.env),
            *(Child.start(f"{self.kind}-load{i}", "bench.loadgen", [], self.load_core, self.log_dir, self.env)
              for i in range(self.plan.load_processes)),
        ]
        self.probe, *self.loads = await asyncio.gather(*children)
        await self._wait_listening()
        return self

    async def _start_janus(self) -> None:
        """Janus on the server core (its own process, measured like Relay), the facade in this process."""
        janus_port = free_port()
        self.server = await self._janus.enter_async_context(janus_process(
            janus_port, JANUS[self.kind], self.server_core, self.log_dir / f"{self.kind}-server.log"))
        await self._janus.enter_async_context(facade(janus_port, self.port))

    async def _wait_listening(self, timeout: float = 90.0) -> None:  # a busy machine starts Python slowly
        deadline = time.monotonic() + timeout
        while True:
            assert self.server is not None
            if self.server.returncode is not None:
                raise RuntimeError(f"the {self.kind} server exited; see {self.log_dir}/{self.kind}-server.log")
            try:
                _, writer = await asyncio.open_connection(LOOPBACK, self.port)
                writer.close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {self.kind} server did not listen within {timeout:g} s") from None
                await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(child.stop() for child in [*self.loads, self.probe, self.publisher] if child))
        await self._janus.aclose()
        if self.server and self.server.returncode is None:
            self.server.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.server.wait(), 15)
            except TimeoutError:
                self.server.kill()
                await self.server.wait()

    async def publish(self, stream: str, mode: str, size: Size, gop: float, honor_pli: bool = True) -> dict[str, Any]:
        """Start a fresh publisher process (the old one, its viewers and legs go first)."""
        await self.set_viewers(0)
        for leg in ("main", "direct"):
            with contextlib.suppress(Exception):
                await self.probe_call("unwatch", leg=leg)
        if self.publisher:
            await self.publisher.stop()
        self.publisher = await Child.start(
            f"{self.kind}-publisher", "bench.publisher", [], self.load_core, self.log_dir, self.env
        )
        self.stream = stream
        info = await self.publisher.call(
            "start", url=self.url(f"/whip/{stream}"), mode=mode, width=size.width, height=size.height,
            fps=FPS, bitrate=size.bitrate, gop=gop, honor_pli=honor_pli,
        )
        self.loop_frames = info.get("loop_frames")
        await self.watch()
        return info

    async def watch(self, timeout: float = 15.0) -> None:
        """Until the server takes viewers (Relay answers 409 until the first media arrives)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.probe_call("watch", leg="main", url=self.url(f"/whep/{self.stream}"),
                                      loop_frames=self.loop_frames)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def probe_call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.probe is not None
        return await self.probe.call(cmd, **args)

    async def set_viewers(self, load_viewers: int) -> int:
        """Spread `load_viewers` over the load processes; returns how many failed to join."""
        n = len(self.loads)
        replies = await asyncio.gather(*(
            load.call("set", url=self.url(f"/whep/{self.stream}"), viewers=load_viewers // n + (i < load_viewers % n))
            for i, load in enumerate(self.loads)
        ))
        self.join_errors = [e for r in replies for e in r["errors"]]
        return sum(r["failed"] for r in replies)

    def _load_pids(self) -> list[int]:
        return [c.pid for c in [*self.loads, self.probe, self.publisher] if c]

    async def _load_stats(self) -> dict[str, int]:
        replies = await asyncio.gather(*(load.call("stats") for load in self.loads))
        return {key: sum(r[key] for r in replies) for key in replies[0]}

    async def window(self, viewers: int, seconds: float) -> Step:
        """Measure `seconds` at the current viewer count (0: the publisher alone, no probe)."""
        assert self.server is not None
        pid = self.server.pid
        if viewers:
            await self.probe_call("snapshot", leg="main")
        load0 = await self._load_stats()
        cores0, cpu0, t0 = core_times(), cpu_times(pid), time.monotonic()
        other0 = sum(cpu_seconds(p) for p in self._load_pids())
        gen0 = sum(cpu_seconds(c.pid) for c in self.loads)
        await asyncio.sleep(seconds)
        cpu1, cores1, t1 = cpu_times(pid), core_times(), time.monotonic()
        other1 = sum(cpu_seconds(p) for p in self._load_pids())
        gen1 = sum(cpu_seconds(c.pid) for c in self.loads)
        probe = await self.probe_call("snapshot", leg="main") if viewers else NO_PROBE
        load1 = await self._load_stats()
        elapsed = t1 - t0
        delta = {k: load1[k] - load0[k] for k in load0}
        load_packets = delta["video_packets"] + delta["audio_packets"]
        n_load = max(1, load1["viewers"])
        return Step(
            viewers=viewers,
            seconds=elapsed,
            server_cpu=(sum(cpu1) - sum(cpu0)) / elapsed,
            server_kernel=(cpu1[1] - cpu0[1]) / elapsed,
            server_core_busy=core_busy(cores0, cores1, self.server_core) if self.server_core is not None else 0.0,
            load_cpu=(other1 - other0) / elapsed,
            loadgen_us_per_packet=(gen1 - gen0) * 1e6 / load_packets if load_packets else 0.0,
            load_core_busy=core_busy(cores0, cores1, self.load_core) if self.load_core is not None else 0.0,
            rss_mb=rss_bytes(pid) / 2**20,
            packets_per_s=(load_packets + probe["rtp_received"]) / elapsed,
            bits_per_s=delta["bytes"] * 8 / elapsed / n_load if load1["viewers"] else 0.0,
            fps=probe["fps"],
            rtp_loss=probe["rtp_loss"],
            missing_frames=probe["missing_frames"],
            probe_max_gap_ms=probe["max_gap_ms"],
            load_loss=delta["lost"] / (load_packets + delta["lost"]) if load_packets else 0.0,
            silent=load1["silent"],
            srtp_sampled=delta["sampled"],
            srtp_authentic=delta["authentic"],
        )


@dataclass
class Sweep:
    server: str
    size: str
    video_bps: float
    steps: list[Step]
    capacity: int | None  # most viewers with the probe at >= 29 fps, < 1 % loss and no freeze
    capacity_limit: str  # what stopped the ramp

    def fit_points(self) -> list[Step]:
        """Unsaturated windows only: a saturated server's CPU no longer grows with viewers.

        A window counts when the load viewers took everything (none silent, < 1 %
        loss) even if the measuring viewer, starved by other processes on its
        core, decoded under 29 fps: what the server spent, it spent forwarding
        every packet. Capacity still needs the probe to pass.
        """
        return [s for s in self.steps if s.forwarded_all and s.server_cpu < SATURATED]

    @property
    def per_viewer(self) -> Line | None:
        """Server cores against viewers: slope = CPU seconds per viewer-second."""
        points = self.fit_points()
        return Line.fit([s.viewers for s in points], [s.server_cpu for s in points])

    @property
    def per_packet(self) -> Line | None:
        """Server CPU microseconds per second against forwarded packets per second."""
        points = self.fit_points()
        return Line.fit([s.packets_per_s for s in points], [s.server_cpu * 1e6 for s in points])

    @property
    def kernel_per_packet(self) -> Line | None:
        """The kernel's part of `per_packet` (mostly sendto on loopback)."""
        points = self.fit_points()
        return Line.fit([s.packets_per_s for s in points], [s.server_kernel * 1e6 for s in points])

    @property
    def rss_per_viewer(self) -> Line | None:
        points = self.fit_points()
        return Line.fit([s.viewers for s in points], [s.rss_mb for s in points])

    @property
    def projected_per_core(self) -> float | None:
        line = self.per_viewer
        return (1 - line.intercept) / line.slope if line and line.slope > 0 else None

    def summary(self) -> dict[str, Any]:
        per_viewer, per_packet = self.per_viewer, self.per_packet
        rss, kernel = self.rss_per_viewer, self.kernel_per_packet
        return {
            "server": self.server, "size": self.size, "video_bps": self.video_bps,
            "cpu_per_viewer": per_viewer.slope if per_viewer else None,
            "idle_cpu": per_viewer.intercept if per_viewer else None,
            "us_per_packet": per_packet.slope if per_packet else None,
            "kernel_us_per_packet": kernel.slope if kernel else None,
            "rss_mb_per_viewer": rss.slope if rss else None,
            "projected_viewers_per_core": self.projected_per_core,
            "capacity": self.capacity, "capacity_limit": self.capacity_limit,
            "steps": [{**asdict(s), "ok": s.ok, "limit": s.limit} for s in self.steps],
        }


async def sweep(rig: Rig, size: Size, counts: list[int], log: Any) -> Sweep:
    """Ramp viewers through `counts`; a failure is re-measured once.

    Capacity is the last count before the probe first fails. The ramp goes on
    while the server still forwards everything and has CPU left, so a probe
    starved by other processes on its core does not cut the CPU fit short.
    """
    info = await rig.publish(f"{size.name}-loop", "loop", size, LOOP_GOP, honor_pli=False)
    await rig.probe_call("unwatch", leg="main")
    await asyncio.sleep(rig.plan.settle)
    steps = [await rig.window(0, rig.plan.window)]  # what the publisher alone costs
    await rig.watch()
    await asyncio.sleep(rig.plan.settle + LOOP_GOP)
    capacity, limit = None, f"plan ended at {counts[-1]} viewers"
    capacity_open = True  # until the probe first fails; the ramp goes on for the CPU fit
    for viewers in counts:
        failed = await rig.set_viewers(viewers - 1)
        await asyncio.sleep(rig.plan.settle + LOOP_GOP)
        step = await rig.window(viewers, rig.plan.window)
        if not step.ok and not failed:
            step = await rig.window(viewers, rig.plan.window)
        step.join_failures = failed
        steps.append(step)
        log(f"{rig.kind} {size.name} {viewers:4d} viewers: server {step.server_cpu:5.1%} "
            f"({step.packets_per_s:7.0f} pkt/s), load core {step.load_core_busy:4.0%}, "
            f"probe {step.fps:4.1f} fps loss {step.rtp_loss:.2%}, silent {step.silent}, "
            f"join failures {failed}, rss {step.rss_mb:.0f} MB" + (f": {rig.join_errors[0]}" if failed else ""))
        if (not step.ok or failed) and capacity_open:
            capacity_open = False
            limit = f"{step.limit or 'the measuring viewer'} at {viewers} viewers"
            if failed:
                limit += f" ({failed} viewers failed to join: {rig.join_errors[0]})"
        if capacity_open:
            capacity = viewers
        if not step.forwarded_all:  # the server dropped viewers or packets: more cannot help
            break
        if step.limit in ("server", "load generator"):  # the next count cannot pass honestly
            cpu = step.server_cpu if step.limit == "server" else step.load_cpu
            if capacity_open:
                limit = f"{step.limit} CPU at {cpu:.0%} at {viewers} viewers"
            break
    await rig.set_viewers(0)
    return Sweep(rig.kind, size.name, info["video_bps"], steps, capacity, limit)


def recorded_video_frames(directory: Path, since: float) -> tuple[int, int]:
    """(video frames, bytes) in the files under `directory` written after `since` (epoch s)."""
    frames = size = 0
    for path in directory.rglob("*"):
        if path.is_file() and path.stat().st_mtime >= since:
            size += path.stat().st_size
            with av.open(str(path)) as container:
                video = [s for s in container.streams if s.type == "video"]
                frames += sum(1 for p in container.demux(video) if p.size) if video else 0
    return frames, size


async def recording(rig: Rig, size: Size) -> dict[str, Any]:
    """Server CPU with the probe alone, then with the stream also recorded: the difference."""
    await rig.publish(f"{size.name}-loop", "loop", size, LOOP_GOP, honor_pli=False)
    await rig.watch()
    await asyncio.sleep(rig.plan.settle + LOOP_GOP)
    off = await rig.window(1, rig.plan.window)
    url = rig.url(f"/api/streams/{rig.stream}/recording")
    started = time.time()
    async with aiohttp.ClientSession() as http:
        async with http.post(url) as response:
            response.raise_for_status()
        await asyncio.sleep(rig.plan.settle + LOOP_GOP)
        on = await rig.window(1, rig.plan.window)
        async with http.delete(url) as response:
            response.raise_for_status()
        stopped = time.time()
    await asyncio.sleep(1.0)  # the writer closes the file
    frames, written = recorded_video_frames(rig.recordings, started)
    return {
        "server": rig.kind, "size": size.name, "cpu_off": off.server_cpu, "cpu_on": on.server_cpu,
        "cpu_per_stream": on.server_cpu - off.server_cpu, "bytes_written": written,
        "frames_written": frames, "frames_sent": round((stopped - started) * FPS), "probe_fps": on.fps,
    }


async def joins(rig: Rig, gop: float, honor_pli: bool) -> dict[str, Any]:
    """Join times at a live publisher with this GOP."""
    await rig.publish(f"live-gop{gop:g}-{'pli' if honor_pli else 'nopli'}", "live", SIZES["480p"], gop, honor_pli)
    await asyncio.sleep(1.0)
    # A random pause as long as the GOP puts each join at a random point of it.
    pause = (rig.plan.join_pause, rig.plan.join_pause + gop * rig.plan.join_spread)
    reply = await rig.probe_call("join", url=rig.url(f"/whep/{rig.stream}"), count=rig.plan.joins, pause=pause)
    times = [t * 1000 for t in reply["join_s"]]
    return {
        "server": rig.kind, "gop_s": gop, "publisher_honors_pli": honor_pli,
        "samples": len(times), "failures": reply["failures"],
        "p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95),
        "max_ms": max(times) if times else None, "join_ms": times,
    }


async def latency(rig: Rig, load_viewers: int) -> dict[str, Any]:
    """Stamp latency through the server and straight from the publisher, at the same time."""
    await rig.publish("live-latency", "live", SIZES["480p"], 1.0)
    assert rig.publisher is not None
    offer = await rig.publisher.call("direct_offer")
    answer = await rig.probe_call("direct", leg="direct", sdp=offer["sdp"])
    await rig.publisher.call("direct_answer", sdp=answer["sdp"])
    failed = await rig.set_viewers(load_viewers)
    await asyncio.sleep(rig.plan.settle + 1.0)
    for leg in ("main", "direct"):
        await rig.probe_call("snapshot", leg=leg)
    await asyncio.sleep(rig.plan.latency_seconds)
    via, direct = [await rig.probe_call("snapshot", leg=leg) for leg in ("main", "direct")]
    await rig.set_viewers(0)

    def added(key: str) -> float | None:
        return via[key] - direct[key] if via[key] is not None and direct[key] is not None else None

    return {
        "server": rig.kind, "load_viewers": load_viewers, "join_failures": failed,
        "via_p50_ms": via["latency_p50_ms"], "via_p95_ms": via["latency_p95_ms"],
        "direct_p50_ms": direct["latency_p50_ms"], "direct_p95_ms": direct["latency_p95_ms"],
        "added_p50_ms": added("latency_p50_ms"), "added_p95_ms": added("latency_p95_ms"),
        "via_fps": via["fps"], "direct_fps": direct["fps"], "frames": via["frames"],
    }


async def crowd(rig: Rig, gop: float, honor_pli: bool) -> dict[str, Any]:
    """A flash crowd: `plan.crowd` viewers join a live publisher at once, `plan.crowd_rounds` times."""
    await rig.publish(f"crowd-gop{gop:g}-{'pli' if honor_pli else 'nopli'}", "live", SIZES["480p"], gop, honor_pli)
    times: list[float] = []
    after: list[float] = []
    failures: list[str] = []
    rng = random.Random(gop)
    for _ in range(rig.plan.crowd_rounds):
        await asyncio.sleep(1.0 + rng.uniform(0, gop))  # a random point of the GOP
        reply = await rig.probe_call("crowd", url=rig.url(f"/whep/{rig.stream}"), count=rig.plan.crowd)
        times += [t * 1000 for t in reply["join_s"]]
        after += [t * 1000 for t in reply["after_connect_s"]]
        failures += reply["failures"]
    return {
        "server": rig.kind, "gop_s": gop, "publisher_honors_pli": honor_pli, "crowd": rig.plan.crowd,
        "samples": len(times), "failures": failures,
        "p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95),
        "max_ms": max(times) if times else None, "join_ms": times,
        "after_connect_p50_ms": percentile(after, 50), "after_connect_p95_ms": percentile(after, 95),
    }


async def loss(rig: Rig) -> list[dict[str, Any]]:
    """The probe and load viewers of a live publisher while `iptables` drops a share of every UDP
    datagram in the namespace: publisher -> server and server -> viewer both lose it."""
    await rig.publish("live-loss", "live", SIZES["480p"], LOOP_GOP)
    failed = await rig.set_viewers(rig.plan.loss_viewers - 1)
    await asyncio.sleep(rig.plan.settle + LOOP_GOP)
    out = []
    for probability in rig.plan.loss:
        with packet_loss(probability):
            await asyncio.sleep(rig.plan.settle)
            await rig.probe_call("snapshot", leg="main")
            load0 = await rig._load_stats()
            await asyncio.sleep(rig.plan.loss_seconds)
            probe = await rig.probe_call("snapshot", leg="main")
            load1 = await rig._load_stats()
        # Load viewers send no NACK: their sequence gaps are the loss of both hops, unrepaired.
        gaps = load1["lost"] - load0["lost"]
        got = sum(load1[k] - load0[k] for k in ("video_packets", "audio_packets"))
        out.append({
            "load_loss": gaps / (got + gaps) if got + gaps else None,
            "server": rig.kind, "loss": probability, "viewers": rig.plan.loss_viewers, "join_failures": failed,
            "seconds": probe["seconds"], "fps": probe["fps"], "freezes": probe["freezes"],
            "frozen_s": probe["frozen_s"], "frames_lost": probe["missing_frames"],
            "rtp_loss": probe["rtp_loss"], "max_gap_ms": probe["max_gap_ms"],
            "latency_p50_ms": probe["latency_p50_ms"], "latency_p95_ms": probe["latency_p95_ms"],
        })
        await asyncio.sleep(rig.plan.settle)  # recover before the next level
    await rig.set_viewers(0)
    return out


async def run_loss(plan: Plan, log_dir: Path, log: Any) -> dict[str, Any]:
    """Only the loss experiment (`python -m bench loss`), for longer windows than the full run affords."""
    results: dict[str, Any] = {"sweeps": [], "recording": [], "joins": [], "latency": [], "crowd": [], "loss": []}
    for server in plan.servers:
        async with Rig(server, plan, log_dir) as rig:
            results["loss"] += await loss(rig)
            log(f"{server} loss: {results['loss'][-len(plan.loss):]}")
    return results


async def run(plan: Plan, log_dir: Path, log: Any, save: Any = None) -> dict[str, Any]:
    """Every experiment of `plan`, every server in the same run; `save(results)` after each step.

    The sweeps go size by size, every server in turn, so that the ratios at a
    size are measured close together in time on a noisy machine (and an
    interrupted run still has them). Each sweep gets a fresh server, so its
    memory growth is its own.
    """
    results: dict[str, Any] = {"sweeps": [], "recording": [], "joins": [], "latency": [], "crowd": [], "loss": []}
    if plan.loss and not shutil.which("iptables"):
        log("no iptables (apt-get install iptables): the loss experiment is left out")
        plan = replace(plan, loss=[])
    if janus_binary() is None and set(JANUS) & set(plan.servers):
        log("no Janus (apt-get install janus): Janus is left out")
        plan = replace(plan, servers=[s for s in plan.servers if s not in JANUS])

    def saved() -> None:
        if save:
            save(results)

    capacity: dict[str, int] = {}
    for name in plan.sizes:
        for server in plan.servers:
            counts = {"relay": plan.relay_counts, "baseline": plan.baseline_counts}.get(server, plan.janus_counts)
            async with Rig(server, plan, log_dir) as rig:
                result = await sweep(rig, SIZES[name], counts, log)
                results["sweeps"].append(result.summary())
            if server not in JANUS:  # the facade has no recording endpoint
                async with Rig(server, plan, log_dir) as rig:  # not the one the sweep overloaded
                    results["recording"].append(await recording(rig, SIZES[name]))
                    log(f"{server} {name} recording: {results['recording'][-1]}")
            if name == "480p" or server not in capacity:
                capacity[server] = result.capacity or 1
            saved()
    for server in [s for s in plan.servers if s in plan.extras]:
        async with Rig(server, plan, log_dir) as rig:
            for load in plan.latency_load:
                # Below the server's measured capacity: an overloaded server's latency is its backlog.
                results["latency"].append(await latency(rig, min(load, max(0, capacity.get(server, 1) - 2))))
                log(f"{server} latency: {results['latency'][-1]}")
            for gop in plan.gops:
                results["joins"].append(await joins(rig, gop, honor_pli=True))
                log(f"{server} joins: {results['joins'][-1]}")
            saved()
            if server == "baseline":
                continue
            for gop in plan.ignore_pli_gops:
                results["joins"].append(await joins(rig, gop, honor_pli=False))
                log(f"{server} joins: {results['joins'][-1]}")
            for gop in plan.crowd_gops:
                for honor_pli in (True, False):
                    results["crowd"].append(await crowd(rig, gop, honor_pli))
                    log(f"{server} crowd: " + str({k: v for k, v in results["crowd"][-1].items() if k != "join_ms"}))
            saved()
            if plan.loss:
                results["loss"] += await loss(rig)
                log(f"{server} loss: {results['loss'][-len(plan.loss):]}")
                saved()
    return results
