"""What the client commands (publish, watch, probe) share on the console.

Common options, Ctrl-C and SIGTERM as a clean stop (sessions are deleted),
failures as one line on stderr with a non-zero exit, and a status line that
redraws itself on a terminal and prints every few seconds otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TextIO, TypedDict, TypeVar
from urllib.parse import unquote

from aiortc import RTCIceServer

from relay.client import ClientError
from relay.media import aiortc_patch

log = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace, asyncio.Event], Awaitable[int]]
INTERRUPTED = 130
T = TypeVar("T")


class UsageError(Exception):
    """A bad argument found after parsing (unreadable file, odd extension...)."""


class Interrupted(Exception):
    """Ctrl-C came before the command was under way."""


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", default=os.environ.get("RELAY_TOKEN"),
                        help="Bearer token sent on every request (default: $RELAY_TOKEN)")
    parser.add_argument("--ice-server", action="append", default=[], metavar="URL",
                        help="STUN/TURN server, e.g. stun:stun.example.com:3478 or "
                        "turn:USER:PASSWORD@turn.example.com:3478?transport=udp (repeatable; "
                        "default: what the endpoint lists on OPTIONS)")
    parser.add_argument("--host-address", action="append", default=[], metavar="IP",
                        help="gather ICE host candidates only on this address (repeatable; "
                        "default: $RELAY_ICE_HOST_ADDRESSES, comma-separated, else all)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="limit for each HTTP request and for ICE/DTLS to connect (default 10)")


def ice_servers(urls: list[str]) -> list[RTCIceServer] | None:
    """`--ice-server` values as RTCIceServers; None (ask the endpoint) when none given."""
    if not urls:
        return None
    servers = []
    for url in urls:
        scheme, _, rest = url.partition(":")
        username = credential = None
        if scheme in ("turn", "turns") and "@" in rest:
            userinfo, rest = rest.rsplit("@", 1)
            username, _, credential = (unquote(p) for p in userinfo.partition(":"))
        servers.append(RTCIceServer(f"{scheme}:{rest}", username, credential))
    return servers


class ClientOptions(TypedDict):
    """The keyword arguments every client takes (`relay.client.session.Client`)."""

    token: str | None
    ice_servers: list[RTCIceServer] | None
    timeout: float


def client_options(args: argparse.Namespace) -> ClientOptions:
    """Keyword arguments for WhipClient/WhepClient from the common options."""
    return {"token": args.token, "ice_servers": ice_servers(args.ice_server), "timeout": args.timeout}


def run(command: Command, args: argparse.Namespace) -> int:
    """Run `command(args, stop)`; `stop` is set by SIGINT/SIGTERM."""
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    addresses = args.host_address or [
        a.strip() for a in os.environ.get("RELAY_ICE_HOST_ADDRESSES", "").split(",") if a.strip()
    ]
    if addresses:
        aiortc_patch.restrict_host_addresses(addresses)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await command(args, stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    name = f"relay {args.command}"
    try:
        return asyncio.run(main())
    except (ClientError, UsageError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, ClientError) else 2
    except (KeyboardInterrupt, Interrupted):
        print(f"{name}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:
        log.debug("%s failed", name, exc_info=True)
        print(f"{name}: unexpected {type(exc).__name__}: {exc} (run `relay -v {args.command} ...` "
              "for details)", file=sys.stderr)
        return 1


async def until(stop: asyncio.Event, *events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait for `stop`, any of `events`, or `timeout` seconds, whichever comes first."""
    waits = [asyncio.ensure_future(e.wait()) for e in (stop, *events)]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def interruptible(stop: asyncio.Event, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` unless `stop` comes first: then cancel it (it cleans up) and raise Interrupted."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise Interrupted
    return task.result()


class StatusLine:
    """A progress line on stderr: redrawn in place on a terminal, else printed every `interval` s."""

    def __init__(self, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._interval = interval
        self._last = -float("inf")
        self._width = 0

    def show(self, text: str) -> None:
        if self._tty:
            self._stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        elif time.monotonic() - self._last >= self._interval:
            self._last = time.monotonic()
            self._stream.write(text + "\n")
        self._stream.flush()

    def say(self, text: str) -> None:
        """A message of its own, on its own line."""
        self.done()
        self._stream.write(text + "\n")
        self._stream.flush()

    def done(self) -> None:
        if self._tty and self._width:
            self._stream.write("\n")
            self._width = 0
