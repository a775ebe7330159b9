"""`python -m bench.datachannels`: what data channels cost the server (not part of `python -m bench`).

    unshare -n sh -c 'ip link set lo up; python -m bench.datachannels --viewers 100 --seconds 10'

Runs `relay serve` and a test-pattern publisher (`relay publish`) as child
processes and N aiortc viewers (encoded, video only: nothing decoded) here,
then measures the server's CPU from /proc:

1. N viewers without a data channel, idle: CPU % over --seconds; join times.
2. The same N with a `chat` channel each (the page's default), idle: CPU %; join times.
3. Chat messages POSTed at --rate a second to those N: the extra CPU over (2),
   per message per recipient, and how many arrived.

Run it inside a loopback-only namespace (`unshare -n`), as the tests are.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from relay.client import ClientError, WhepClient
from relay.media.aiortc_patch import restrict_host_addresses

from .__main__ import isolated
from .measure import free_port
from .proc import cpu_seconds

STREAM = "bench"
JOIN_CONCURRENCY = 4


def server_config(port: int) -> dict[str, Any]:
    unlimited = {key: 0 for key in ("max_pending_per_address", "max_pending", "requests_per_second",
                                    "max_viewers_per_stream", "max_connections_per_address")}
    return {
        "server": {"port": port},
        "ice": {"host_addresses": ["127.0.0.1"], "connect_timeout": 60.0, "consent_timeout": 60.0},
        "limits": unlimited,
        "chat": {"messages_per_second": 10000.0, "burst": 10000},
    }


async def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:g} s")
            await asyncio.sleep(0.2)


async def wait_live(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(url) as response:
                if response.status == 200 and (await response.json()).get("live"):
                    return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{url} did not go live within {timeout:g} s")


async def join(url: str, viewers: int, labels: list[str]) -> tuple[list[WhepClient], list[float]]:
    """N viewers, at most JOIN_CONCURRENCY joining at once; each one's POST-to-connected time (channels open)."""
    clients: list[WhepClient] = []
    times: list[float] = []
    gate = asyncio.Semaphore(JOIN_CONCURRENCY)

    async def one() -> None:
        async with gate:
            client = WhepClient(url, kinds=("video",), encoded=True, data_channels=labels, timeout=60,
                                ice_servers=[])
            started = time.monotonic()
            try:
                await client.start()
                await client.wait_connected()
            except ClientError as exc:  # a loaded machine: counted, and the run goes on with the others
                print(f"bench.datachannels: a viewer did not join: {exc}", file=sys.stderr)
                await client.close()
                return
            clients.append(client)
            times.append(time.monotonic() - started)

    await asyncio.gather(*(one() for _ in range(viewers)))
    return clients, times


async def drain(clients: list[WhepClient], counts: list[int]) -> None:
    """Read every viewer's video and chat, as a player would (a viewer that never reads would overflow)."""
    async def video(client: WhepClient) -> None:
        while True:
            await client.encoded["video"].recv()

    async def chat(client: WhepClient) -> None:
        async for _ in client.channels["chat"]:
            counts[0] += 1

    tasks = [video(c) for c in clients] + [chat(c) for c in clients if "chat" in c.channels]
    await asyncio.gather(*tasks, return_exceptions=True)


async def cpu_percent(pid: int, seconds: float) -> float:
    before, started = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - started)


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 1)}


async def phase(base: str, pid: int, viewers: int, labels: list[str], seconds: float,
                rate: float) -> dict[str, Any]:
    clients, times = await join(f"{base}/whep/{STREAM}", viewers, labels)
    if not clients:
        raise RuntimeError("no viewer joined (is the publisher still live? see the logs in /tmp)")
    viewers = len(clients)
    counts = [0]
    reader = asyncio.ensure_future(drain(clients, counts))
    try:
        await asyncio.sleep(2)  # settle: keyframes, the joins' PLIs
        result: dict[str, Any] = {"viewers": viewers, "labels": labels, "join": summary(times),
                                  "idle_cpu_percent": round(await cpu_percent(pid, seconds), 1)}
        if "chat" in labels:
            result["chat"] = await chat_load(base, pid, seconds, rate, result["idle_cpu_percent"], viewers, counts)
        return result
    finally:
        reader.cancel()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def chat_load(base: str, pid: int, seconds: float, rate: float, idle: float, viewers: int,
                    counts: list[int]) -> dict[str, Any]:
    """POST chat messages at `rate` a second for `seconds`; the server's extra CPU per message per recipient."""
    url = f"{base}/api/streams/{STREAM}/chat"
    received_before = counts[0]
    async with aiohttp.ClientSession() as http:

        async def post(n: int) -> None:
            async with http.post(url, json={"name": "bench", "text": f"message {n} " + "x" * 80}) as response:
                response.raise_for_status()

        posts = []
        before, started = cpu_seconds(pid), time.monotonic()
        while time.monotonic() - started < seconds:  # on schedule, whatever each POST takes
            posts.append(asyncio.ensure_future(post(len(posts))))
            await asyncio.sleep(max(0.0, len(posts) / rate - (time.monotonic() - started)))
        await asyncio.gather(*posts)
        used = cpu_seconds(pid) - before
        elapsed = time.monotonic() - started
        sent = len(posts)
        deliveries = sent * viewers
        deadline = time.monotonic() + 10
        while counts[0] - received_before < deliveries and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        async with http.get(f"{base}/metrics") as response:
            dropped = next(float(line.split()[1]) for line in (await response.text()).splitlines()
                           if line.startswith("relay_data_messages_dropped_total"))
    extra = used - idle / 100 * elapsed
    return {"messages": sent, "rate": round(sent / elapsed, 1), "deliveries": deliveries,
            "received": counts[0] - received_before, "dropped": int(dropped),
            "cpu_percent": round(100 * used / elapsed, 1),
            "us_per_message_per_recipient": round(1e6 * extra / deliveries, 1) if deliveries else None}


async def run(viewers: int, seconds: float, rate: float) -> dict[str, Any]:
    restrict_host_addresses(["127.0.0.1"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "relay.yaml"
        config.write_text(yaml.safe_dump(server_config(port)))
        env = {**os.environ, "RELAY_ICE_HOST_ADDRESSES": "127.0.0.1"}
        logs = Path(tempfile.gettempdir())
        server = await asyncio.create_subprocess_exec(sys.executable, "-m", "relay", "serve", "--config", str(config),
                                                      stderr=open(logs / "bench-datachannels-server.log", "wb"),
                                                      env=env)
        publisher = None
        try:
            await wait_http(f"{base}/api/streams")
            publisher = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay", "publish", f"{base}/whip/{STREAM}", "--test-pattern", "--size",
                "320x240", "--fps", "15", "--no-audio", "--gop", "1",
                stdout=asyncio.subprocess.DEVNULL, stderr=open(logs / "bench-datachannels-publisher.log", "wb"),
                env=env)
            await wait_live(f"{base}/api/streams/{STREAM}")
            without = await phase(base, server.pid, viewers, [], seconds, rate)
            await asyncio.sleep(2)
            with_chat = await phase(base, server.pid, viewers, ["chat"], seconds, rate)
        finally:
            for child in (publisher, server):
                if child is not None and child.returncode is None:
                    child.terminate()
                    await child.wait()
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "loadavg": os.getloadavg(), "seconds": seconds,
            "without_data_channel": without, "with_chat_channel": with_chat}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.datachannels", description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each CPU window")
    parser.add_argument("--rate", type=float, default=20.0, help="chat messages a second in the chat window")
    args = parser.parse_args()
    if not isolated():
        raise SystemExit("run it with loopback only: unshare -n sh -c 'ip link set lo up; "
                         "python -m bench.datachannels'")
    print(json.dumps(asyncio.run(run(args.viewers, args.seconds, args.rate)), indent=2))


if __name__ == "__main__":
    main()
