"""Media bots: what decoding a stream for bots costs, what each more bot adds, and the bots' latency.

    python -m bench.bots [--seconds 15] [--size 640x480]

Runs `relay serve`, `relay publish --test-pattern` and `relay bot` as processes
(inside a loopback-only network namespace, like the rest of bench/) and
charges CPU time from /proc to the bot process alone:

- CPU of the bot process with 1, 2 and 4 bots that do nothing with the frame
  (`passive`: the decode and the hand-out), and with bots that convert each
  frame to an RGB ndarray (`rgb`, what a numpy bot pays at least), per second
  and per frame decoded (a busy machine may not deliver 30 fps), while a
  pre-encoded loop is published (cheap for the publisher);
- the latency of a bot's output stream (input stamp -> output frame decoded
  by a viewer here), p50/p95, beside that of the input stream itself, while
  `relay publish --test-pattern` stamps frames as it sends them.

The bots are defined in this file, which `relay bot bench/bots.py:NAME` loads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from relay.client.bot import Bot

from .proc import stop_process

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent

passive = Bot("passive")


@passive.video
async def look(frame: av.VideoFrame) -> None:
    return None


rgb = Bot("rgb")


@rgb.video(numpy="rgb24")
def convert(pixels: np.ndarray) -> None:
    return None


invert = Bot("invert")


@invert.video(numpy="yuv420p")
def inverted(planes: np.ndarray) -> np.ndarray:
    return 255 - planes


def start(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RELAY_ICE_HOST_ADDRESSES": "127.0.0.1"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "relay", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


async def wait_up(url: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).close())
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("relay serve did not start") from None
            await asyncio.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class BotCost:
    cpu_percent: float  # of one core
    fps: float  # frames decoded per second (a loaded machine may not keep 30)
    cpu_ms_per_frame: float


async def bot_cpu(base: str, names: list[str], seconds: float, log: Path) -> BotCost:
    """What a `relay bot` process running `names` on the stream cam costs, from /proc and its own figures."""
    env = {**os.environ, "RELAY_ICE_HOST_ADDRESSES": "127.0.0.1"}
    with log.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "bot", *(f"{HERE}:{name}" for name in names), "--input",
            f"{base}/whep/cam", "--wait", "--no-events", "--stats-json", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    latest: dict[str, Any] = {}

    async def read() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            latest.update(json.loads(line)["bots"][0])

    reader = asyncio.ensure_future(read())
    try:
        for _ in range(120):  # connected and decoding
            await asyncio.sleep(0.5)
            if process.returncode is not None or latest.get("frames"):
                break
        if process.returncode is not None or not latest.get("frames"):
            raise RuntimeError(f"relay bot is not running: {log.read_text()[-2000:]}")
        await asyncio.sleep(2)
        # Every frame decoded reached the first bot or was replaced while it was busy.
        decoded = latest["frames"] + latest["drops"]
        before, started = cpu_seconds(process.pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, elapsed = cpu_seconds(process.pid) - before, time.monotonic() - started
        frames = latest["frames"] + latest["drops"] - decoded
        return BotCost(round(100 * cpu / elapsed, 1), round(frames / elapsed, 1), round(1000 * cpu / max(frames, 1), 2))
    finally:
        process.terminate()
        await process.wait()
        reader.cancel()


async def latencies(url: str, seconds: float, undo: Any) -> list[float]:
    from relay.client import WhepClient
    from relay.client.testpattern import latency_ms, read_stamp

    found: list[float] = []
    async with WhepClient(url, kinds=("video",)) as viewer:
        track = await viewer.wait_track("video")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            stamp = read_stamp(undo(await asyncio.wait_for(track.recv(), 10)))
            if stamp:
                found.append(latency_ms(stamp))
    return found


def reinverted(frame: av.VideoFrame) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(255 - frame.to_ndarray(format="yuv420p"), format="yuv420p")


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 1), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 1),
            "frames": len(ordered)}


async def run(seconds: float, size: str, latency_size: str, parts: set[str], work: Path) -> dict[str, Any]:
    from relay.client import WhipClient
    from relay.client.session import ClientError
    from relay.media.aiortc_patch import restrict_host_addresses

    from .media import LoopTrack, encode_loop

    restrict_host_addresses(["127.0.0.1"])
    port = 18000 + os.getpid() % 1000
    base = f"http://127.0.0.1:{port}"
    config = work / "relay.yaml"
    config.write_text(f"server: {{port: {port}}}\nice: {{host_addresses: [127.0.0.1]}}\n")
    log = work / "bench-bots.log"
    server = start("serve", "--config", str(config), log=log)
    publisher = None
    results: dict[str, Any] = {"size": size, "latency_size": latency_size, "seconds": seconds, "cpu": {}}
    width, height = (int(v) for v in size.split("x"))
    try:
        await wait_up(f"{base}/api/streams", server)
        # Costs: a pre-encoded loop (1 s GOP, 1 Mbit/s) costs the publisher almost nothing on a busy machine.
        frames = await asyncio.to_thread(encode_loop, width, height, 30, 1_000_000, 4.0, 1.0)
        async with WhipClient(f"{base}/whip/cam", [LoopTrack(frames, 30)], video_codec="VP8", packets=["video"]):
            for name in ("passive", "rgb") if "cpu" in parts else ():
                for count in (1, 2, 4):
                    cost = await bot_cpu(base, [name] * count, seconds, log)
                    results["cpu"][f"{name} x{count}"] = asdict(cost)
                    print(f"bot process, {count} x {name}: {cost.cpu_percent:5.1f} % of a core at {cost.fps} fps, "
                          f"{cost.cpu_ms_per_frame} CPU-ms per frame", file=sys.stderr)
        if "latency" not in parts:
            return results
        # Latency: frames stamped as they are sent, small enough that this process's viewer keeps up.
        publisher = start("publish", f"{base}/whip/cam", "--test-pattern", "--size", latency_size, "--bitrate",
                          "500k", log=log)
        bot = start("bot", f"{HERE}:invert", "--input", f"{base}/whep/cam", "--output", f"{base}/whip/cam-inv",
                    "--wait", "--no-events", log=log)
        try:
            for _ in range(40):
                try:
                    await asyncio.sleep(0.5)
                    output = await latencies(f"{base}/whep/cam-inv", seconds, reinverted)
                    break
                except ClientError:
                    continue  # not live yet
            else:
                raise RuntimeError(f"the invert bot's output never went live: see {log}")
            direct = await latencies(f"{base}/whep/cam", seconds, lambda frame: frame)
        finally:
            stop_process(bot)
        results["latency_ms"] = {"bot_output": percentiles(output), "input": percentiles(direct)}
    finally:
        if publisher:
            stop_process(publisher)
        stop_process(server)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measurement")
    parser.add_argument("--size", default="640x480", help="picture size for the CPU figures")
    parser.add_argument("--latency-size", default="320x240",
                        help="picture size for the latency (the viewer here must keep up, or it measures itself)")
    parser.add_argument("--only", choices=("cpu", "latency"), help="measure only this")
    args = parser.parse_args(argv)
    if os.environ.get("RELAY_BENCH_ISOLATED") != "1":  # a loopback-only namespace, as bench/__main__ does
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, "-m",
                   "bench.bots", *(argv if argv is not None else sys.argv[1:])]
        return subprocess.call(command, env={**os.environ, "RELAY_BENCH_ISOLATED": "1"}, cwd=ROOT)
    with tempfile.TemporaryDirectory() as work:
        parts = {args.only} if args.only else {"cpu", "latency"}
        results = asyncio.run(run(args.seconds, args.size, args.latency_size, parts, Path(work)))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
