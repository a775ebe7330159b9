"""`python -m bench profile`: where Relay's CPU goes while it forwards to many viewers.

py-spy samples the server (only the thread holding the GIL, so waiting is
not counted) while it forwards the 480p loop; the answer lists the functions
that were on top of the stack most often (self time) and the biggest subtrees.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from .measure import LOOP_GOP, SHORT, SIZES, Rig

TOP = 15
EVENT_LOOP_CALLBACK = "Handle._run (events.py)"


def _function(frame: str) -> str:
    """"f (path/file.py:123)" -> "f (file.py)": lines of one function add up."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if where else name


def summarize(raw: Path) -> str:
    """Self and inclusive shares from py-spy's collapsed stacks ("a;b;c count" lines)."""
    own: Counter[str] = Counter()
    under_loop: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_function(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        start = max((i + 1 for i, f in enumerate(frames) if f == EVENT_LOOP_CALLBACK), default=0)
        for frame in set(frames[start:]):
            under_loop[frame] += int(count)
    if not total:
        return "py-spy took no samples"
    lines = [f"{total} samples with the GIL held", "", "self time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(TOP)]
    lines += ["", "inclusive, below the event loop's callbacks:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in under_loop.most_common(TOP)]
    return "\n".join(lines)


async def profile(viewers: int, seconds: float, log_dir: Path, log: Any) -> str:
    if not shutil.which("py-spy"):
        raise SystemExit("bench profile needs py-spy (pip install py-spy)")
    plan = dataclasses.replace(SHORT, servers=["relay"])
    async with Rig("relay", plan, log_dir) as rig:
        await rig.publish("profile", "loop", SIZES["480p"], LOOP_GOP, honor_pli=False)
        failed = await rig.set_viewers(viewers - 1)
        await asyncio.sleep(plan.settle + LOOP_GOP)
        assert rig.server is not None
        raw, svg = log_dir / "relay-profile.txt", log_dir / "relay-profile.svg"
        log(f"sampling the Relay server (pid {rig.server.pid}) for {seconds:g} s with {viewers} viewers")
        step = asyncio.create_task(rig.window(viewers, seconds))
        spy = await asyncio.create_subprocess_exec(
            "py-spy", "record", "--pid", str(rig.server.pid), "--duration", str(int(seconds)), "--rate", "100",
            "--gil", "--nonblocking", "--format", "raw", "-o", str(raw),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        await spy.wait()
        measured = await step
        spy = await asyncio.create_subprocess_exec(
            "py-spy", "record", "--pid", str(rig.server.pid), "--duration", "5", "--rate", "100",
            "--gil", "--nonblocking", "-o", str(svg),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        await spy.wait()
    head = (f"Relay with {viewers} viewers ({failed} failed to join) of 480p VP8 ~1 Mbps + Opus: "
            f"server {measured.server_cpu:.0%} of a core, {measured.packets_per_s:.0f} packets/s out; "
            f"flame graph {svg}")
    return head + "\n" + summarize(raw)
