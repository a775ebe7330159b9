"""Media bots: Python code that watches a stream's decoded frames and publishes what it makes.

A `Bot` holds handlers; `BotHost` runs one or more bots on one input stream:

    bot = Bot("invert")

    @bot.video(numpy="rgb24")
    def on_frame(pixels):          # sync handlers run in a worker thread, async ones on the loop
        return 255 - pixels        # a frame (or ndarray) goes to the output stream, None sends nothing

    bot.say({"motion": 0.3})       # JSON to the stream's viewers, from any thread

Decode once: the host subscribes to the input once (one WHEP session, one
decoder per kind) and shares the decoded frames between its bots through
aiortc's `MediaRelay`, unbuffered: a bot slower than real time gets the newest
frame when it is ready for one, never a growing queue, and the frames it
missed are counted as drops. A handler that raises is a crash: logged, counted,
and the bot is restarted (its `on_start` hooks run again) after a backoff;
its output keeps showing the newest frame it made meanwhile.

Output frames keep the input frame's pts, so the output stream's RTP
timestamps follow the input's (and a stamp drawn in the picture survives).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import av
import numpy as np
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from relay.client.session import ClientError
from relay.client.whep import WhepClient, start_when_live
from relay.client.whip import WhipClient

log = logging.getLogger(__name__)

EVENTS_LABEL = "events"  # the data-channel label bot messages go to
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0  # seconds before a crashed bot restarts; doubled per crash in a row
STABLE_AFTER = 10.0  # a bot that ran this long without a crash starts its backoff afresh
WINDOW = 2.0  # seconds the reported fps and lag are averaged over
MAX_PENDING_MESSAGES = 100

Frame = av.VideoFrame | av.AudioFrame


@dataclass
class Handler:
    kind: str
    func: Callable[[Any], Any]
    numpy: str | None  # pixel (video) or sample (audio) format of the ndarray the handler takes; None: av frames

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)


class Bot:
    """What a bot does with frames: handlers per kind, its output stream's name, messages to viewers."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.handlers: dict[str, Handler] = {}
        self.output: str | None = None
        self.on_start: list[Callable[[], Any]] = []
        self._say: Callable[[Any], None] | None = None

    def video(self, func: Callable[[Any], Any] | None = None, *, numpy: str | None = None) -> Any:
        """Decorate the video handler: it takes an `av.VideoFrame` (or an ndarray in the `numpy` pixel
        format, e.g. "rgb24", "bgr24", "gray") and returns a frame, an ndarray of that format, or None."""
        return self._register("video", func, numpy)

    def audio(self, func: Callable[[Any], Any] | None = None, *, numpy: str | None = None) -> Any:
        """Decorate the audio handler: an `av.AudioFrame` (or an ndarray: `numpy="s16"`) in, one or None out."""
        return self._register("audio", func, numpy)

    def start(self, func: Callable[[], Any]) -> Callable[[], Any]:
        """Decorate a hook run when the bot starts and again whenever it restarts after a crash."""
        self.on_start.append(func)
        return func

    def _register(self, kind: str, func: Callable[[Any], Any] | None, numpy: str | None) -> Any:
        def register(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
            if kind in self.handlers:
                raise ValueError(f"bot {self.name or ''} already has a {kind} handler")
            self.handlers[kind] = Handler(kind, f, numpy)
            if self.name is None:
                self.name = getattr(f, "__name__", None)
            return f

        return register(func) if func is not None else register

    def publish(self, name: str) -> None:
        """Publish what the handlers return as stream `name` (next to the input, unless the runner
        is given an output URL)."""
        self.output = name

    def say(self, message: Any) -> None:
        """Send `message` (JSON) to the viewers of the input stream, and of the output stream if any.

        Never blocks (callable from sync handlers in their thread); dropped when the bot is not running
        or the server falls more than MAX_PENDING_MESSAGES behind.
        """
        if self._say is not None:
            self._say(message)


def load_bot(spec: str) -> Bot:
    """The bot named by `MODULE:OBJECT` (or `path/file.py:OBJECT`); a plain function becomes a video bot."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r}: name a bot as MODULE:OBJECT, e.g. examples.invert:bot")
    if module_name.endswith(".py"):
        path = Path(module_name)
        loader = importlib.util.spec_from_file_location(path.stem, path)
        if loader is None or not path.is_file():
            raise ValueError(f"{spec!r}: no file {path}")
        module = importlib.util.module_from_spec(loader)
        sys.modules[path.stem] = module
        loader.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")  # modules in the working directory, as `python -m` finds them
        module = importlib.import_module(module_name)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{spec!r}: module {module_name} has no {attr}") from None
    if isinstance(obj, Bot):
        bot = obj
    elif callable(obj):
        bot = Bot(attr)
        bot.video(obj)
    else:
        raise ValueError(f"{spec!r} is neither a Bot nor a function")
    if not bot.handlers:
        raise ValueError(f"{spec!r} has no @video or @audio handler")
    bot.name = bot.name or attr
    return bot


def sibling_url(url: str, protocol: str, stream: str) -> str:
    """Relay's URL layout: `.../whep/cam` -> `.../{protocol}/{stream}`."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/").split("/")
    if len(path) < 2 or path[-2] not in ("whip", "whep"):
        raise ValueError(f"cannot tell where stream {stream!r} goes from {url}: give its URL")
    return urlunsplit(parts._replace(path="/".join([*path[:-2], protocol, stream]), query=""))


def data_url(url: str, label: str = EVENTS_LABEL) -> str:
    """Relay's data API for the stream of a WHIP/WHEP URL: `/api/streams/{stream}/data/{label}`."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/").split("/")
    return urlunsplit(parts._replace(path="/".join([*path[:-2], "api", "streams", path[-1], "data", label]),
                                     query=""))


@dataclass
class BotStats:
    """How a bot keeps up: reported once a second by the host, shown in /api/streams and /metrics."""

    name: str
    output: str | None = None
    state: str = "starting"  # running, crashed (waiting to restart), stopped
    frames: int = 0  # handled
    drops: int = 0  # frames that came while the bot was busy and were replaced by a newer one
    crashes: int = 0
    messages: int = 0
    fps: float = 0.0
    lag_ms: float | None = None  # frame decoded -> handler done, mean over WINDOW
    last_error: str | None = None


class NewestFrameTrack(MediaStreamTrack):
    """An output track that sends the newest frame put into it; older unsent ones are replaced."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._frame: Frame | None = None
        self._ready = asyncio.Event()
        self.replaced = 0

    def put(self, frame: Frame) -> None:
        if self._ready.is_set():
            self.replaced += 1
        self._frame = frame
        self._ready.set()

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._ready.wait()
        self._ready.clear()
        assert self._frame is not None
        return self._frame


class _Arrivals(MediaStreamTrack):
    """The decoded input, read at full speed, each frame marked with (index, arrival time) in `opaque`."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self._count = 0

    async def recv(self) -> Frame:
        frame = await self._source.recv()
        assert isinstance(frame, (av.VideoFrame, av.AudioFrame))  # a decoded track
        frame.opaque = (self._count, time.monotonic())
        self._count += 1
        # A get() from a non-empty queue does not yield: without this, a burst of decoded frames would
        # overwrite each other before even a fast bot could take one.
        await asyncio.sleep(0)
        return frame


def _as_input(handler: Handler, frame: Frame) -> Any:
    if handler.numpy is None:
        return frame
    if isinstance(frame, av.VideoFrame):
        return frame.to_ndarray(format=handler.numpy)
    return frame.to_ndarray()


def _as_output(handler: Handler, result: Any, source: Frame) -> Frame | None:
    """The handler's result as a frame with the input's timing; None for nothing to send."""
    if result is None:
        return None
    if isinstance(result, np.ndarray):
        if isinstance(source, av.VideoFrame):
            fmt = handler.numpy or ("gray" if result.ndim == 2 else "rgb24")
            out: Frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(result, np.uint8), format=fmt)
        else:
            out = av.AudioFrame.from_ndarray(result, format=source.format.name, layout=source.layout.name)
            out.sample_rate = source.sample_rate
    elif isinstance(result, (av.VideoFrame, av.AudioFrame)):
        out = result
    else:
        raise TypeError(f"a {handler.kind} handler returns a frame, an ndarray or None, not {type(result).__name__}")
    out.pts, out.time_base = source.pts, source.time_base
    return out


class Messenger:
    """Posts `bot.say()` messages, in order, to the data API of their streams; never blocks the caller."""

    def __init__(self, token: str | None) -> None:
        self._token = token
        self._queue: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue(MAX_PENDING_MESSAGES)
        self._loop = asyncio.get_running_loop()
        self._warned = False

    def post(self, message: Any, urls: list[str]) -> None:
        text = json.dumps(message)  # refused here, in the caller, if it is not JSON
        self._loop.call_soon_threadsafe(self._enqueue, text, urls)

    def _enqueue(self, text: str, urls: list[str]) -> None:
        if not self._queue.full():
            self._queue.put_nowait((text, urls))

    async def run(self) -> None:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                text, urls = await self._queue.get()
                for url in urls:
                    try:
                        async with http.post(url, data=text, headers=headers) as response:
                            if response.status >= 300:
                                raise ClientError(f"HTTP {response.status} {await response.text()}")
                    except (aiohttp.ClientError, TimeoutError, ClientError) as exc:
                        if not self._warned:
                            log.warning("bot message to %s failed: %s", url, exc or type(exc).__name__)
                            self._warned = True


@dataclass
class _Running:
    """One bot inside a host: its subscriptions, output and figures."""

    bot: Bot
    stats: BotStats
    output_url: str | None
    inputs: dict[str, MediaStreamTrack] = field(default_factory=dict)
    outputs: dict[str, NewestFrameTrack] = field(default_factory=dict)
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (done, lag s)
    publisher: WhipClient | None = None


class BotHost:
    """Runs bots on one input stream (a WHEP URL): one session, one decoder per kind, shared.

    `outputs[i]` is the WHIP URL bot i publishes to (None: its `publish()` name next to the input,
    or no output). `report(stats)` is called about once a second.
    """

    def __init__(self, bots: list[Bot], input_url: str, outputs: list[str | None] | None = None,
                 report: Callable[[list[BotStats]], None] | None = None, events: bool = True,
                 **client_options: Any) -> None:
        self.input_url = input_url
        self._options = client_options
        self._report = report
        self._events = events
        outputs = list(outputs or []) + [None] * (len(bots) - len(outputs or []))
        self.running = []
        for bot, url in zip(bots, outputs):
            if url is None and bot.output:
                url = sibling_url(input_url, "whip", bot.output)
            self.running.append(_Running(bot, BotStats(bot.name or "bot", output=_stream_of(url)), url))
        self.kinds = tuple(k for k in ("video", "audio") if any(k in r.bot.handlers for r in self.running))
        self.viewer: WhepClient | None = None

    @property
    def stats(self) -> list[BotStats]:
        return [r.stats for r in self.running]

    async def run(self, stop: asyncio.Event, wait_live: bool = True) -> None:
        """Until `stop`, or until the input stream ends (its WHEP session ends)."""
        tasks: list[asyncio.Task[Any]] = []
        try:
            starting = asyncio.ensure_future(start_when_live(
                lambda: WhepClient(self.input_url, kinds=self.kinds, **self._options),
                None if wait_live else time.monotonic()))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():
                starting.cancel()  # the client deletes any session it made
                await asyncio.gather(starting, return_exceptions=True)
                return
            self.viewer = starting.result()
            messenger = self._messenger()
            if messenger:
                tasks.append(asyncio.ensure_future(messenger.run()))
            relay = MediaRelay()
            viewer = self.viewer
            sources: dict[str, MediaStreamTrack] = {k: _Arrivals(await viewer.wait_track(k)) for k in self.kinds}
            for running in self.running:
                await self._start_bot(running, relay, sources)
                tasks += [asyncio.ensure_future(self._loop(running, kind)) for kind in running.inputs]
            tasks.append(asyncio.ensure_future(self._tick()))
            ended = asyncio.ensure_future(self.viewer.ended.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([ended, stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for waiter in (ended, stopped):
                waiter.cancel()
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for running in self.running:
                running.stats.state = "stopped"
                running.bot._say = None
                if running.publisher:
                    await running.publisher.close()
            if self.viewer:
                await self.viewer.close()
            if self._report:
                self._report(self.stats)

    def _messenger(self) -> Messenger | None:
        if not self._events:
            return None
        messenger = Messenger(self._options.get("token"))
        for running in self.running:
            urls = [data_url(url) for url in (self.input_url, running.output_url) if url]
            running.bot._say = self._sayer(running, messenger, urls)
        return messenger

    @staticmethod
    def _sayer(running: _Running, messenger: Messenger, urls: list[str]) -> Callable[[Any], None]:
        def say(message: Any) -> None:
            messenger.post(message, urls)
            running.stats.messages += 1

        return say

    async def _start_bot(self, running: _Running, relay: MediaRelay, sources: dict[str, MediaStreamTrack]) -> None:
        for kind in running.bot.handlers:
            running.inputs[kind] = relay.subscribe(sources[kind], buffered=False)
        if running.output_url:
            running.outputs = {kind: NewestFrameTrack(kind) for kind in running.bot.handlers}
            running.publisher = WhipClient(running.output_url, list(running.outputs.values()), **self._options)
            await running.publisher.start()
        await self._call_start_hooks(running)

    @staticmethod
    async def _call_start_hooks(running: _Running) -> None:
        for hook in running.bot.on_start:
            result = hook()
            if inspect.isawaitable(result):
                await result
        running.stats.state = "running"

    async def _loop(self, running: _Running, kind: str) -> None:
        handler, source, stats = running.bot.handlers[kind], running.inputs[kind], running.stats
        last_index: int | None = None
        backoff, last_crash = BACKOFF_FIRST, 0.0
        while True:
            try:
                frame = await source.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, (av.VideoFrame, av.AudioFrame))  # from _Arrivals
            index, arrived = cast(tuple[int, float], frame.opaque)
            if last_index is not None:
                stats.drops += max(0, index - last_index - 1)
            last_index = index
            try:
                result = await self._call(handler, _as_input(handler, frame))
                out = _as_output(handler, result, frame)
            except Exception as exc:
                stats.crashes += 1
                stats.state = "crashed"
                stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.error("bot %s crashed on a %s frame; restarting in %g s", stats.name, kind, backoff,
                          exc_info=True)
                if time.monotonic() - last_crash > STABLE_AFTER:
                    backoff = BACKOFF_FIRST
                last_crash = time.monotonic()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                await self._call_start_hooks(running)
                last_index = None  # frames missed while down are no drops
                continue
            now = time.monotonic()
            stats.frames += 1
            running.recent.append((now, now - arrived))
            if out is not None and kind in running.outputs:
                running.outputs[kind].put(out)

    @staticmethod
    async def _call(handler: Handler, value: Any) -> Any:
        if handler.is_async:
            return await handler.func(value)
        result = await asyncio.to_thread(handler.func, value)  # a slow sync bot must not stall the others
        return await result if inspect.isawaitable(result) else result

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for running in self.running:
                recent = running.recent
                while recent and recent[0][0] < now - WINDOW:
                    recent.popleft()
                running.stats.fps = round(len(recent) / WINDOW, 1)
                running.stats.lag_ms = round(1000 * sum(lag for _, lag in recent) / len(recent), 1) if recent else None
            if self._report:
                self._report(self.stats)


def _stream_of(url: str | None) -> str | None:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] if url else None


def stats_json(stats: list[BotStats]) -> str:
    """One line of JSON: how the runner reports to whoever supervises it (`relay serve --bot`)."""
    return json.dumps({"bots": [asdict(s) for s in stats]})

