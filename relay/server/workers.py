"""Worker processes: viewers spread over processes, each one an edge of the main process.

The main process keeps everything but viewers: publishers (WHIP), pages,
the API, events, recordings. It listens on the public port and on a Unix
socket of its own, and starts `workers.count` worker processes, each on
its own Unix socket in a private run directory (mode 0700). A worker is an
edge (`relay.server.edge`) whose origin is the main process's socket: it
pulls each stream it serves once.

Routing: a viewer's `POST /whep/{stream}` on the public port is forwarded to
a worker (round robin over the ones that answer); the session ids a worker
makes start with its name (`w1.`), so every later request on the `Location`
(PATCH, DELETE, GET) goes to the same worker. Everything arriving on the
main process's own socket is a worker's pull and is served there. The main
process asks each worker every second how many viewers it serves per stream,
so its API, events and dashboard count them, and `/metrics` adds every
worker's series (labelled `process`). A worker that exits is started again;
only its viewers notice (their sessions died with it). SIGTERM to the main
process drains every worker.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from multidict import CIMultiDict

from relay.config import Config, OriginConfig, RecordingConfig
from relay.server.context import CONTEXT
from relay.server.endpoint import read_body, stream_name
from relay.server.health import shutting_down
from relay.server.metrics import OTHER_PROCESSES
from relay.server.problems import Problem
from relay.server.whep import RELAY_PULL

log = logging.getLogger(__name__)

WORKER_SESSION = re.compile(r"w(\d+)\.")
CLIENT_HEADER = "X-Relay-Client"  # the viewer's address, from the main process to a worker
FORWARDED_REQUEST_HEADERS = ("Authorization", "Content-Type", "If-Match", "Accept")
DROPPED_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
COUNTS_INTERVAL = 1.0
READY_TIMEOUT = 30.0
RESTART_DELAY = 0.5
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def over_unix_socket(request: web.Request) -> bool:
    """The request came through one of Relay's own Unix sockets (from the main process or a worker)."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


def worker_config(config: Config, secret: str) -> Config:
    """A worker's settings: the main process's, as an edge of it that records nothing.

    The main process already limited its clients' requests and connections;
    `secret` lets it read every stream's counts and metrics from the worker.
    """
    worker = copy.deepcopy(config)
    worker.origin = OriginConfig(url="http://relay", token=None, linger=config.origin.linger)
    worker.recording = RecordingConfig(enabled=False, dir=config.recording.dir)
    worker.workers.count = 1
    worker.limits.requests_per_second = 0
    worker.limits.max_connections_per_address = 0
    worker.auth.metrics_token = secret
    worker.server.shutdown_grace = config.server.shutdown_grace * 0.8  # done before the main process
    return worker


@dataclass
class Worker:
    index: int
    socket: str
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    http: aiohttp.ClientSession | None = None
    streams: dict[str, int] = field(default_factory=dict)  # viewers per stream, as it last said

    @property
    def name(self) -> str:
        return f"w{self.index}"

    def url(self, path: str) -> str:
        return f"http://{self.name}{path}"


class Pool:
    """The worker processes of the main process: started, watched, restarted, asked, drained."""

    def __init__(self, app: web.Application, config: Config, count: int, run_dir: Path) -> None:
        self._ctx = app[CONTEXT]
        self._config = config
        self._run_dir = run_dir
        self._secret = secrets.token_urlsafe(24)
        self._config_path = run_dir / "worker.yaml"
        self.main_socket = str(run_dir / "main.sock")
        self.workers = [Worker(i, str(run_dir / f"worker-{i}.sock")) for i in range(count)]
        self._next = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._deadline = 0.0

    async def start(self) -> None:
        self._config_path.write_text(yaml.safe_dump(dataclasses.asdict(worker_config(self._config, self._secret))))
        for worker in self.workers:
            worker.http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=worker.socket))
            self._tasks.append(asyncio.create_task(self._supervise(worker)))
        self._tasks.append(asyncio.create_task(self._ask_counts()))
        async with asyncio.timeout(READY_TIMEOUT):
            while not all(w.ready for w in self.workers):
                await asyncio.sleep(0.05)
        log.info("%d worker processes ready", len(self.workers))

    async def _supervise(self, worker: Worker) -> None:
        while not self._closing:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay", "serve", "--config", str(self._config_path),
                "--worker", str(worker.index), "--run-dir", str(self._run_dir))
            waiting = asyncio.create_task(self._until_ready(worker))
            code = await worker.process.wait()
            waiting.cancel()
            worker.ready = False
            self._forget(worker)
            if self._closing:
                return
            log.warning("worker %s (pid %d) exited with %s; starting it again",
                        worker.name, worker.process.pid, code)
            await asyncio.sleep(RESTART_DELAY)

    async def _until_ready(self, worker: Worker) -> None:
        assert worker.http is not None
        while True:
            try:
                async with worker.http.get(worker.url("/healthz"), timeout=aiohttp.ClientTimeout(total=1)) as reply:
                    if reply.status == 200:
                        worker.ready = True
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)

    def _forget(self, worker: Worker) -> None:
        """The worker is gone: so are its viewers."""
        worker.streams = {}
        for stream in self._ctx.streams:
            stream.set_elsewhere(worker.name, 0)

    async def _ask_counts(self) -> None:
        """Every second, each worker's viewers per stream, into the main process's streams."""
        while True:
            await asyncio.gather(*(self._ask(worker) for worker in self.workers if worker.ready))
            for stream in self._ctx.streams:
                for worker in self.workers:
                    stream.set_elsewhere(worker.name, worker.streams.get(stream.name, 0))
            await asyncio.sleep(COUNTS_INTERVAL)

    async def _ask(self, worker: Worker) -> None:
        try:
            reply = await self._get(worker, "/api/streams", "application/json")
            worker.streams = {s["name"]: s["viewers"] for s in (await reply.json())["streams"]}
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            log.debug("worker %s did not say its counts: %s", worker.name, exc)

    async def _get(self, worker: Worker, path: str, accept: str) -> aiohttp.ClientResponse:
        assert worker.http is not None
        headers = {"Authorization": f"Bearer {self._secret}", "Accept": accept}
        async with worker.http.get(worker.url(path), headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=2)) as reply:
            await reply.read()
            return reply

    async def metrics(self) -> list[tuple[str, str]]:
        """Each worker's /metrics text, by worker name."""
        async def one(worker: Worker) -> tuple[str, str] | None:
            try:
                reply = await self._get(worker, "/metrics", "text/plain")
                return worker.name, await reply.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("worker %s gave no metrics: %s", worker.name, exc)
                return None

        answers = await asyncio.gather(*(one(w) for w in self.workers if w.ready))
        return [answer for answer in answers if answer is not None]

    async def forward_new(self, request: web.Request) -> web.StreamResponse:
        """A viewer's POST: to the next worker that answers."""
        body = await self._body(request)
        ready = [w for w in self.workers if w.ready]
        start = next(self._next)
        for i in range(len(ready)):
            worker = ready[(start + i) % len(ready)]
            try:
                return await self._forward(worker, request, body)
            except aiohttp.ClientConnectionError as exc:
                log.warning("worker %s unreachable: %s", worker.name, exc)
        raise Problem(503, "no-worker", "no worker process can take a viewer right now; retry shortly",
                      headers={"Retry-After": "1"})

    async def forward_to(self, index: int, request: web.Request) -> web.StreamResponse:
        """A request on a session's Location: to the worker that holds the session."""
        body = await self._body(request)
        worker = self.workers[index] if index < len(self.workers) else None
        if worker is not None and worker.ready:
            try:
                return await self._forward(worker, request, body)
            except aiohttp.ClientConnectionError:
                pass
        raise Problem(404, "unknown-session",
                      f"there is no WHEP session at {request.path}; it ended with its worker process")

    async def _body(self, request: web.Request) -> bytes | None:
        if request.method not in ("POST", "PATCH"):
            return None
        server = self._config.server
        return (await read_body(request, request.content_type, server.max_body_bytes, server.body_timeout)).encode()

    async def _forward(self, worker: Worker, request: web.Request, body: bytes | None) -> web.Response:
        assert worker.http is not None
        headers = {k: request.headers[k] for k in FORWARDED_REQUEST_HEADERS if k in request.headers}
        headers[CLIENT_HEADER] = request.remote or "unknown"
        # A POST may wait for the worker's pull: its offer to the main process and ICE.
        timeout = aiohttp.ClientTimeout(total=2 * self._config.ice.connect_timeout + 5)
        async with worker.http.request(request.method, worker.url(request.path_qs), data=body, headers=headers,
                                       allow_redirects=False, timeout=timeout) as reply:
            content = await reply.read()
            kept = CIMultiDict((k, v) for k, v in reply.headers.items() if k.lower() not in DROPPED_RESPONSE_HEADERS
                               and not k.lower().startswith("access-control-"))  # CORS is the main process's
            return web.Response(status=reply.status, body=content, headers=kept)

    def terminate(self) -> None:
        """SIGTERM every worker: each closes its viewers and its pulls, while this process closes its own."""
        self._closing = True
        self._deadline = time.monotonic() + self._config.server.shutdown_grace * 0.9
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)

    async def close(self) -> None:
        """Wait for the workers (killed if they outlast the shutdown grace), then let go of everything."""
        if not self._closing:
            self.terminate()
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        try:
            async with asyncio.timeout(max(0.0, self._deadline - time.monotonic())):
                await asyncio.gather(*(process.wait() for process in running))
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    process.kill()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.workers:
            if worker.http is not None:
                await worker.http.close()


POOL = web.AppKey("workers", Pool)
ORPHAN_WATCH = web.AppKey("orphan_watch", asyncio.Task)


def routing_middleware(pool: Pool) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Viewers' WHEP requests to the workers; a worker's pull (on the main socket) is served here."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if over_unix_socket(request):
            request[RELAY_PULL] = True
            return await handler(request)
        canonical = request.match_info.route.resource.canonical if request.match_info.route.resource else None
        if canonical == "/whep/{stream}" and request.method == "POST":
            stream_name(request)  # 400 for a bad name, here as anywhere
            if not request.app[CONTEXT].accepting:
                raise shutting_down()
            return await pool.forward_new(request)
        if canonical == "/whep/{stream}/{session}" and request.method != "OPTIONS":
            owner = WORKER_SESSION.match(request.match_info["session"])
            if owner:
                return await pool.forward_to(int(owner[1]), request)
        return await handler(request)

    return middleware


def setup_main(app: web.Application, config: Config, count: int) -> str:
    """Make `app` the main process of `count` workers; returns the Unix socket it must also listen on."""
    run_dir = Path(tempfile.mkdtemp(prefix="relay-"))  # mode 0700: only this user reaches the sockets
    pool = app[POOL] = Pool(app, config, count, run_dir)
    app.middlewares.append(routing_middleware(pool))
    app[OTHER_PROCESSES] = pool.metrics

    async def start(_: web.Application) -> None:
        await pool.start()

    async def terminate(_: web.Application) -> None:
        pool.terminate()

    async def close(_: web.Application) -> None:
        await pool.close()
        shutil.rmtree(run_dir, ignore_errors=True)

    app.on_startup.append(start)
    app.on_shutdown.insert(0, terminate)  # the workers drain while this process closes its own sessions
    app.on_cleanup.append(close)
    return pool.main_socket


def setup_worker(app: web.Application, index: int) -> None:
    """Make `app` worker `index`: its session ids name it; its clients' addresses come from the main process."""
    app[CONTEXT].sessions.id_prefix = f"w{index}."

    @web.middleware
    async def client_address(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = request.headers.get(CLIENT_HEADER)
        if address and over_unix_socket(request):
            request = request.clone(remote=address)
        return await handler(request)

    app.middlewares.insert(0, client_address)
    parent = os.getppid()

    async def orphaned() -> None:
        """A worker whose main process died (SIGKILL) ends itself."""
        while os.getppid() == parent:
            await asyncio.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    async def watch(_: web.Application) -> None:
        app[ORPHAN_WATCH] = asyncio.create_task(orphaned())

    async def stop(_: web.Application) -> None:
        app[ORPHAN_WATCH].cancel()

    app.on_startup.append(watch)
    app.on_cleanup.append(stop)


def worker_sockets(run_dir: str, index: int) -> tuple[str, str]:
    """A worker's own socket and the main process's, in `run_dir`."""
    return str(Path(run_dir) / f"worker-{index}.sock"), str(Path(run_dir) / "main.sock")
