"""/metrics: each figure matches what the server did, counters never go down, NACKs both ways."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..conftest import RunningRelay, finished, first_stamp, recordings, relay_with


async def scrape(relay: RunningRelay) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    async with aiohttp.ClientSession() as http, http.get(relay.url("/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_follow_a_publisher_and_its_viewers(tmp_path: Path) -> None:
    async with relay_with({"recording": {"enabled": True, "dir": str(tmp_path)}}) as relay:
        async with WhipClient(relay.url("/whip/m"), [TestPatternTrack(160, 120), ToneTrack()]):
            viewers = [WhepClient(relay.url("/whep/m")) for _ in range(2)]
            for viewer in viewers:
                await viewer.start()
            for viewer in viewers:
                await first_stamp(viewer)
            stream = relay.ctx.streams.get("m")
            # a second of video (30 fps) and audio (50 frames/s) to each viewer, and some of it recorded
            await relay.wait_until(lambda: all(v.outputs["video"].frames >= 30
                                               and v.outputs["audio"].frames >= 50 for v in stream.viewers)
                                   and recordings(relay).recorder("m").bytes_written > 1000)
            packets_before = stream.packets_in
            frames_before = sum(v.frames_sent for v in stream.viewers)
            recorded_before = recordings(relay).recorder("m").bytes_written
            live = await scrape(relay)
            assert value(live, "relay_streams_live") == 1
            assert value(live, "relay_publishers") == 1 and value(live, "relay_viewers") == 2
            assert value(live, "relay_stream_viewers", stream="m") == 2
            assert value(live, "relay_sessions", kind="whep", state="connected") == 2
            assert value(live, "relay_sessions", kind="whip", state="connected") == 1
            assert value(live, "relay_accepting") == 1
            packets = value(live, "relay_rtp_packets_in_total")
            assert packets_before <= packets <= stream.packets_in
            assert value(live, "relay_bytes_in_total") > packets * 12
            frames = value(live, "relay_frames_out_total")
            assert frames_before <= frames <= sum(v.frames_sent for v in stream.viewers)
            assert frames >= 2 * (30 + 50), "two viewers, a second of video and audio each"
            assert value(live, "relay_bytes_out_total") > frames * 10
            # a joiner asks for a keyframe only when there is no GOP to replay: the count must be the server's
            assert value(live, "relay_keyframe_requests_total") == stream.keyframe_requests
            assert value(live, "relay_join_seconds_count", kind="whep") == 2
            assert value(live, "relay_join_seconds_count", kind="whip") == 1
            assert 0 < value(live, "relay_join_seconds_sum", kind="whep") < 2 * 5
            assert value(live, "relay_join_seconds_bucket", kind="whep", le="15.0") == 2
            assert value(live, "relay_recording_bytes_total") >= recorded_before > 1000
            assert value(live, "relay_recording_errors_total") == 0
            assert value(live, "process_resident_memory_bytes") > 10e6

            # NACKs both ways: the server asks the publisher, a viewer asks the server.
            receiver = next(iter(stream._receivers.values()))
            await receiver._send_rtcp_nack(stream.tracks["video"].ssrc, [1, 2, 3])
            client_receiver = next(r for r in viewers[0].pc.getReceivers() if r.track.kind == "video")
            ssrc = client_receiver.getSynchronizationSources()[0].source
            await client_receiver._send_rtcp_nack(ssrc, [5, 6])
            await relay.wait_until(lambda: stream.nacks_received >= 2, timeout=5)
            nacked = await scrape(relay)
            assert value(nacked, "relay_nacks_sent_total") >= value(live, "relay_nacks_sent_total") + 3
            assert value(nacked, "relay_nacks_received_total") >= value(live, "relay_nacks_received_total") + 2
            for viewer in viewers:
                await viewer.close()
        await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)
        await finished(relay, "m")
        gone = await scrape(relay)
        for name in ("relay_streams_live", "relay_publishers", "relay_viewers"):
            assert value(gone, name) == 0
        assert ("relay_stream_viewers", (("stream", "m"),)) not in gone
        for name, _ in gone:  # counters stay where they were once everything is gone
            if name.endswith("_total"):
                assert value(gone, name) >= nacked.get((name, ()), 0), name
        assert value(gone, "relay_frames_out_total") >= frames
        assert value(gone, "relay_recording_bytes_total") >= value(live, "relay_recording_bytes_total")


async def test_health_endpoints(relay: RunningRelay) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(relay.url("/healthz")) as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        async with http.get(relay.url("/readyz")) as response:
            assert response.status == 200 and (await response.json())["status"] == "ready"
        relay.ctx.accepting = False
        async with http.get(relay.url("/readyz")) as response:
            assert response.status == 503 and response.content_type == "application/problem+json"
        async with http.get(relay.url("/metrics")) as response:
            assert "relay_accepting 0.0" in await response.text()
        relay.ctx.accepting = True

