"""Benchmark processes: pinned children driven by JSON lines, and what /proc says.

Every role (server, publisher, probe, load generator) runs in its own process
so that `taskset` can put the server on one core and everything that
generates or measures load on another, and so that /proc can charge CPU time
to the server alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent  # so children find `bench` from any directory
REPLY_TIMEOUT = 180.0


class ChildError(RuntimeError):
    """A child process failed a request or died; the message names its log."""


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) seconds of every thread of `pid` (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def core_times() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat, to see who else used a core."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values[:8]]
            idle = ticks[3] + ticks[4]
            out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def core_busy(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], core: int) -> float:
    """Fraction of `core` that was busy between two `core_times()` readings."""
    if core not in before or core not in after:
        return 0.0
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return busy / total if total else 0.0


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: a blocking child (a server, coturn) is gone after this."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **(extra or {})}


def pinned(core: int | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if core is not None else argv


@dataclass
class Child:
    """One role in its own process: a JSON request per line in, a JSON reply per line out."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    _lock: asyncio.Lock

    @classmethod
    async def start(
        cls, name: str, module: str, args: list[str], core: int | None, log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> Child:
        log = log_dir / f"{name}.log"
        with log.open("ab") as err:
            process = await asyncio.create_subprocess_exec(
                *pinned(core, [sys.executable, "-m", module, *args]),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=child_env(env),
                limit=16 * 1024 * 1024,
            )
        return cls(name, process, log, asyncio.Lock())

    @property
    def pid(self) -> int:
        return self.process.pid

    def _failure(self, what: str) -> ChildError:
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return ChildError(f"{self.name} {what}; last lines of {self.log}:\n{tail}")

    async def call(self, cmd: str, timeout: float = REPLY_TIMEOUT, **args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            try:
                self.process.stdin.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
                await self.process.stdin.drain()
                line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
            except (BrokenPipeError, ConnectionResetError):
                raise self._failure(f"died before answering {cmd!r}") from None
            except TimeoutError:
                raise self._failure(f"did not answer {cmd!r} within {timeout:g} s") from None
        if not line:
            raise self._failure(f"exited during {cmd!r}")
        reply = json.loads(line)
        if "error" in reply:
            raise self._failure(f"failed {cmd!r}: {reply['error']}")
        return reply

    async def stop(self, grace: float = 10.0) -> None:
        """Close stdin (the child's signal to clean up and exit), then kill if it lingers."""
        if self.process.returncode is not None:
            return
        if self.process.stdin and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


Handler = Callable[..., Awaitable[dict[str, Any]]]


def _reply_stream() -> TextIO:
    """A private copy of stdout for replies; fd 1 becomes stderr so stray prints cannot corrupt them."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return replies


async def serve(handlers: dict[str, Handler], cleanup: Callable[[], Awaitable[None]]) -> None:
    """The child's side of `Child`: answer requests until stdin closes, then `cleanup()`."""
    replies = _reply_stream()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            handler = handlers.get(request.pop("cmd"))
            try:
                if handler is None:
                    raise ValueError(f"unknown command; known: {sorted(handlers)}")
                reply = await handler(**request)
            except Exception as exc:  # the parent gets the error and the log, not a hang
                traceback.print_exc()
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            replies.write(json.dumps(reply) + "\n")
    finally:
        await cleanup()
