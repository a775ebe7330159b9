"""Edge and worker figures (issue 14): latency added per hop, joins through an edge, CPU per viewer with workers.

    python -m bench.edge [--viewers 16] [--joins 15] [--seconds 10] [--out DIR]

Runs inside a loopback-only network namespace (it re-executes itself under
`unshare -n`, as `python -m bench` does). Servers are `relay serve`
processes; the publisher, the probe (decoding, stamp-reading viewers) and
the load generator are the roles of `bench.publisher`, `bench.probe` and
`bench.loadgen`. CPU is read from /proc for a server's whole process tree
(main process and workers). Nothing is pinned: on a small machine the
load generator shares the cores, so the figures are per viewer, not a
maximum. A separate script so that `python -m bench` stays as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .__main__ import isolated
from .peers import LOOPBACK
from .proc import Child, child_env, cpu_seconds
from .stats import percentile

FPS = 30
WIDTH, HEIGHT, BITRATE = 854, 480, 1_000_000
SETTLE = 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its children (a main process and its workers)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        total += sum(tree_cpu(int(child)) for child in children.read_text().split())
    return total


@dataclass
class Server:
    process: asyncio.subprocess.Process
    port: int

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 30)


async def relay(name: str, log_dir: Path, workers: int = 1, origin: str | None = None, linger: float = 5.0) -> Server:
    port = free_port()
    config = log_dir / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"port": port},
        # An overloaded shared machine delays consent checks: do not drop the publisher for it.
        "ice": {"host_addresses": [LOOPBACK], "consent_timeout": 120.0},
        "limits": {"requests_per_second": 0, "max_viewers_per_stream": 0, "max_pending_per_address": 0},
        "workers": {"count": workers},
        "origin": {"url": origin, "linger": linger},
    }))
    with (log_dir / f"{name}.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve", "--config", str(config), stdout=log, stderr=log, env=child_env())
    deadline = time.monotonic() + 90
    while True:
        try:
            _, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.close()
            return Server(process, port)
        except OSError:
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log_dir}/{name}.log") from None
            await asyncio.sleep(0.2)


async def watch(probe: Child, leg: str, url: str, timeout: float = 20.0) -> None:
    """Until the server takes the probe's viewer (409 until the publisher's media is in)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await probe.call("watch", leg=leg, url=url)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def publish(log_dir: Path, url: str, mode: str, gop: float, honor_pli: bool = True) -> Child:
    publisher = await Child.start(f"publisher-{mode}-{gop:g}-{honor_pli}", "bench.publisher", [], None, log_dir)
    await publisher.call("start", url=url, mode=mode, width=WIDTH, height=HEIGHT, fps=FPS, bitrate=BITRATE,
                         gop=gop, honor_pli=honor_pli)
    return publisher


async def hop_latency(log_dir: Path, seconds: float) -> dict[str, Any]:
    """Stamp latency to a viewer of the origin and to a viewer of an edge, at the same time."""
    origin = await relay("origin", log_dir)
    edge = await relay("edge", log_dir, origin=origin.url(""))
    publisher = await publish(log_dir, origin.url("/whip/hop"), "live", 1.0)
    probe = await Child.start("probe-hop", "bench.probe", [], None, log_dir)
    try:
        await watch(probe, "origin", origin.url("/whep/hop"))
        await watch(probe, "edge", edge.url("/whep/hop"))
        await asyncio.sleep(SETTLE)
        for leg in ("origin", "edge"):
            await probe.call("snapshot", leg=leg)
        await asyncio.sleep(seconds)
        at = {leg: await probe.call("snapshot", leg=leg) for leg in ("origin", "edge")}
        return {
            "origin_p50_ms": at["origin"]["latency_p50_ms"], "edge_p50_ms": at["edge"]["latency_p50_ms"],
            "origin_p95_ms": at["origin"]["latency_p95_ms"], "edge_p95_ms": at["edge"]["latency_p95_ms"],
            "added_p50_ms": at["edge"]["latency_p50_ms"] - at["origin"]["latency_p50_ms"],
            "edge_fps": at["edge"]["fps"], "frames": at["edge"]["frames"],
        }
    finally:
        await asyncio.gather(probe.stop(), publisher.stop())
        await asyncio.gather(edge.stop(), origin.stop())


async def edge_joins(log_dir: Path, count: int, gop: float = 4.0) -> list[dict[str, Any]]:
    """Join times through an edge at a GOP of `gop` s: warm (the pull is up) and cold (each join pulls)."""
    results = []
    for honor_pli, warm in ((True, True), (True, False), (False, True)):
        origin = await relay("origin-join", log_dir)
        edge = await relay("edge-join", log_dir, origin=origin.url(""), linger=0.0)
        publisher = await publish(log_dir, origin.url("/whip/join"), "live", gop, honor_pli)
        probe = await Child.start("probe-join", "bench.probe", [], None, log_dir)
        try:
            await watch(probe, "origin", origin.url("/whep/join"))  # the publisher is up
            if warm:
                await watch(probe, "edge", edge.url("/whep/join"))  # keeps the pull up
            await asyncio.sleep(1.0)
            reply = await probe.call("join", url=edge.url("/whep/join"), count=count, pause=(0.5, 0.5 + gop),
                                     timeout=count * (gop + 20))
            times = [t * 1000 for t in reply["join_s"]]
            results.append({"gop_s": gop, "publisher_honors_pli": honor_pli, "pull": "warm" if warm else "cold",
                            "samples": len(times), "failures": reply["failures"][:3],
                            "p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95),
                            "max_ms": max(times) if times else None})
        finally:
            await asyncio.gather(probe.stop(), publisher.stop())
            await asyncio.gather(edge.stop(), origin.stop())
    return results


async def worker_cpu(log_dir: Path, workers: int, viewers: int, seconds: float) -> dict[str, Any]:
    """The server tree's CPU with the publisher alone, then with `viewers` load viewers."""
    server = await relay(f"relay-w{workers}", log_dir, workers=workers)
    publisher = await publish(log_dir, server.url("/whip/cpu"), "loop", 1.0)
    load = await Child.start(f"load-w{workers}", "bench.loadgen", [], None, log_dir)
    try:
        await asyncio.sleep(SETTLE)

        async def window() -> float:
            cpu0, t0 = tree_cpu(server.process.pid), time.monotonic()
            await asyncio.sleep(seconds)
            return (tree_cpu(server.process.pid) - cpu0) / (time.monotonic() - t0)

        alone = await window()
        joined = await load.call("set", url=server.url("/whep/cpu"), viewers=viewers)
        await asyncio.sleep(SETTLE)
        before, t0 = await load.call("stats"), time.monotonic()
        loaded = await window()
        after, t1 = await load.call("stats"), time.monotonic()
        packets = sum(after[k] - before[k] for k in ("video_packets", "audio_packets"))
        return {"workers": workers, "viewers": joined["viewers"], "join_failures": joined["failed"],
                "silent_viewers": after["silent"], "packets_per_s": packets / (t1 - t0),
                "cpu_publisher_only": alone, "cpu_loaded": loaded,
                "cpu_per_viewer": (loaded - alone) / max(1, joined["viewers"]),
                "cpu_us_per_packet": (loaded - alone) * 1e6 / (packets / (t1 - t0)) if packets else None}
    finally:
        await asyncio.gather(load.stop(), publisher.stop())
        await server.stop()


def projection(one: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
    """Viewers of one 480p stream an 8- and a 32-core machine could serve, from the measured costs.

    With W workers (one per core) the main process costs what it costs with
    the publisher alone plus W pulls served as viewers; each worker pays
    one pull (received) and its share of viewers.
    """
    per_viewer = one["cpu_per_viewer"]
    # The workers' extra CPU over one process at the same viewers, per worker: two pulls, sent and received.
    pull = max(0.0, (two["cpu_loaded"] - one["cpu_loaded"]) / 2)
    base = one["cpu_publisher_only"]
    out: dict[str, Any] = {"viewers_per_core_one_process": 1 / per_viewer if per_viewer > 0 else None,
                           "pull_cost_per_worker_cores": pull}
    for cores in (8, 32):
        spare = cores * 0.8 - base - cores * pull  # 20 % headroom
        out[f"viewers_{cores}_cores"] = int(spare / per_viewer) if per_viewer > 0 else None
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    log_dir = Path(args.out)
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"nproc": os.cpu_count(), "loadavg_start": os.getloadavg()}
    if "latency" in args.only:
        results["hop_latency"] = await hop_latency(log_dir, args.seconds)
        print(json.dumps(results["hop_latency"]), flush=True)
    if "joins" in args.only:
        results["edge_joins"] = await edge_joins(log_dir, args.joins)
        print(json.dumps(results["edge_joins"]), flush=True)
    if "cpu" in args.only:
        cpu = [await worker_cpu(log_dir, workers, args.viewers, args.seconds) for workers in (1, 2)]
        results["workers_cpu"] = cpu
        one, two = (step["cpu_loaded"] for step in cpu)
        results["workers_overhead"] = two / one - 1 if one else None
        results["projection"] = projection(*cpu)
    results["loadavg_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=16, help="load viewers for the CPU figures")
    parser.add_argument("--joins", type=int, default=15, help="joins per join experiment")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--out", default="bench-edge", help="directory for logs and results.json")
    parser.add_argument("--only", default="latency,joins,cpu", help="experiments to run, comma-separated")
    args = parser.parse_args(argv)
    if not isolated():
        flags = "-n" if os.geteuid() == 0 else "-rn"
        os.execvp("unshare", ["unshare", flags, "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                              sys.executable, "-m", "bench.edge", *sys.argv[1:]])
    results = asyncio.run(run(args))
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
