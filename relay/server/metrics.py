"""`/metrics` in the Prometheus text format.

Nothing is counted for metrics on the media path: a custom collector reads,
at scrape time, the counters the streams, viewers and sessions keep anyway
(`Streams.totals()`, `Sessions`). The only metric observed as it happens is
the join time, once per session when it first connects.

Per-stream series name the stream in a label, so they cover only streams
without a view token, unless the scraper presents `auth.metrics_token`;
totals over all streams name none and are always there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from relay.server import auth
from relay.server.context import CONTEXT, Context
from relay.server.session import Session

JOIN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0)
STATES = ("new", "connecting", "connected", "failed", "closed")

# name, help, key of Streams.totals()
COUNTERS = (
    ("relay_rtp_packets_in", "RTP packets received from publishers", "packets_in"),
    ("relay_bytes_in", "RTP bytes (payload + 12-byte header) received from publishers", "bytes_in"),
    ("relay_frames_out", "Encoded frames handed to viewers' senders", "frames_out"),
    ("relay_bytes_out", "Encoded media bytes handed to viewers' senders", "bytes_out"),
    ("relay_keyframe_requests", "Keyframe requests (PLI) sent to publishers", "keyframe_requests"),
    ("relay_nacks_sent", "Packets NACKed to publishers (asked to be sent again)", "nacks_sent"),
    ("relay_nacks_received", "Packets viewers NACKed (asked Relay to send again)", "nacks_received"),
    ("relay_data_messages_in", "Data channel and chat messages taken in (publishers, HTTP, chat)", "data_in"),
    ("relay_data_messages_out", "Data channel and chat messages delivered to viewers' channels and HTTP readers",
     "data_out"),
    ("relay_data_messages_dropped", "Data messages a viewer or reader missed: its buffer was full", "data_dropped"),
)


# The streams the scrape being encoded may name; set by the handler around the (synchronous) encoding.
_NAMED: ContextVar[Callable[[str], bool] | None] = ContextVar("relay_metrics_named", default=None)


def named_streams() -> Callable[[str], bool]:
    """Whose per-stream series the scrape being encoded may show (none outside a scrape)."""
    return _NAMED.get() or (lambda name: False)


class RelayCollector(Collector):
    """Reads the live state and the lifetime totals of one app at scrape time."""

    def __init__(self, ctx: Context, recording_totals: Callable[[], Mapping[str, int]]) -> None:
        self._ctx = ctx
        self._recording_totals = recording_totals

    def collect(self) -> Iterator[Metric]:
        ctx = self._ctx
        streams = list(ctx.streams)
        live = [s for s in streams if s.live]
        yield GaugeMetricFamily("relay_streams_live", "Streams with a publisher", value=len(live))
        yield GaugeMetricFamily("relay_publishers", "WHIP sessions", value=ctx.sessions.count("whip"))
        yield GaugeMetricFamily("relay_viewers", "WHEP sessions", value=ctx.sessions.count("whep"))
        per_stream = GaugeMetricFamily("relay_stream_viewers", "Viewers of each live stream", labels=["stream"])
        named = named_streams()
        for stream in (s for s in live if named(s.name)):
            per_stream.add_metric([stream.name], stream.watching)
        yield per_stream
        states = Counter((s.kind, s.state) for s in ctx.sessions)
        by_state = GaugeMetricFamily("relay_sessions", "Sessions by protocol and connection state",
                                     labels=["kind", "state"])
        for kind in ("whip", "whep"):
            for state in STATES:
                by_state.add_metric([kind, state], states[(kind, state)])
        yield by_state
        yield GaugeMetricFamily("relay_accepting", "1 while new sessions are accepted, 0 while shutting down",
                                value=1 if ctx.accepting else 0)
        totals = ctx.streams.totals()
        for name, documentation, key in COUNTERS:
            yield CounterMetricFamily(name, documentation, value=totals[key])
        recorded = self._recording_totals()
        yield CounterMetricFamily("relay_recording_bytes", "Media bytes muxed into recording files",
                                  value=recorded["bytes"])
        yield CounterMetricFamily("relay_recording_errors",
                                  "Recording write failures and writer-queue overflows", value=recorded["errors"])


REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
# Worker mode: the other processes' /metrics texts, by process name.
OtherProcesses = Callable[[], Awaitable[list[tuple[str, str]]]]
OTHER_PROCESSES: web.AppKey[OtherProcesses] = web.AppKey("metrics_other_processes")


class AllProcesses(Collector):
    """This process's series and the other processes' (parsed from their text), each labelled `process`.

    Their per-stream series are filtered as this scrape may see them.
    """

    def __init__(self, own: CollectorRegistry, others: list[tuple[str, str]], named: Callable[[str], bool]) -> None:
        self._sources = [("main", list(own.collect()))]
        self._sources += [(name, list(text_string_to_metric_families(text))) for name, text in others]
        self._named = named

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for process, families in self._sources:
            for family in families:
                into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                into.samples += [sample._replace(labels={**sample.labels, "process": process})
                                 for sample in family.samples
                                 if "stream" not in sample.labels or self._named(sample.labels["stream"])]
        return iter(merged.values())


async def metrics(request: web.Request) -> web.Response:
    """The text format, or OpenMetrics when the scraper's Accept asks for it."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    others = request.app.get(OTHER_PROCESSES)
    texts = await others() if others is not None else None
    visible = auth.metrics_streams(request)
    named = _NAMED.set(visible)
    try:
        registry = request.app[REGISTRY]
        body = encoder(registry if texts is None else AllProcesses(registry, texts, visible))
    finally:
        _NAMED.reset(named)
    return web.Response(body=body, headers={"Content-Type": content_type})


def setup(app: web.Application, recording_totals: Callable[[], Mapping[str, int]]) -> None:
    """One registry per app (tests run many apps in one process); join times observed on connect."""
    ctx = app[CONTEXT]
    registry = CollectorRegistry()
    collector = RelayCollector(ctx, recording_totals)
    registry.register(collector)
    ProcessCollector(registry=registry)
    join = Histogram("relay_join_seconds", "From the offer POST to the peer connection connected",
                     ["kind"], registry=registry, buckets=JOIN_BUCKETS)

    def joined(session: Session) -> None:
        if session.connected_at is not None:
            join.labels(session.kind).observe(session.connected_at - session.created)

    ctx.sessions.connected_listeners.append(joined)
    app[REGISTRY] = registry
    app.router.add_get("/metrics", metrics)
