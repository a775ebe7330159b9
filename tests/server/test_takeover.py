"""A new publisher replaces a silent one, or any one when it holds the publish token."""

from __future__ import annotations

import time

from relay.client import SessionError, WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..conftest import assert_problem, first_stamp, make_offer, relay_with, request

SDP = {"Content-Type": "application/sdp"}


async def test_a_silent_publisher_is_replaced_after_takeover_idle() -> None:
    async with relay_with({"forwarding": {"takeover_idle": 1.5}}) as running:
        first = WhipClient(running.url("/whip/cam"), [TestPatternTrack(160, 120), ToneTrack()], video_codec="VP8")
        await first.start()
        stream = running.ctx.streams.get("cam")
        assert stream is not None and stream.live
        # While it sends, a second publisher is refused with no hint to retry.
        response, body = await request("POST", running.url("/whip/cam"), await make_offer(), **SDP)
        assert_problem(response, body, 409, "already has a publisher")
        assert "Retry-After" not in response.headers

        for sender in first.pc.getSenders() if first.pc else []:  # the encoder stops, the session stays
            if sender.track is not None:
                sender.track.stop()
        await running.wait_until(lambda: stream.idle_for() > 0.6, timeout=5)
        response, body = await request("POST", running.url("/whip/cam"), await make_offer(), **SDP)
        assert_problem(response, body, 409, "retry after")
        assert 1 <= int(response.headers["Retry-After"]) <= 2

        started = time.monotonic()
        second = WhipClient(running.url("/whip/cam"), [TestPatternTrack(160, 120), ToneTrack()], video_codec="VP8")
        await second.start()  # retries after Retry-After, then replaces the silent one
        try:
            assert time.monotonic() - started < 5
            await running.wait_until(lambda: first.ended.is_set() and stream.live, timeout=5)
            assert stream.publisher is not None and stream.publisher.id in (second.location or "")
            async with WhepClient(running.url("/whep/cam")) as viewer:
                await first_stamp(viewer)  # the second publisher's pattern reaches viewers
        finally:
            await second.close()
            await first.close()
        await running.wait_until(lambda: len(running.ctx.sessions) == 0)


async def test_the_publish_token_replaces_a_live_publisher_at_once() -> None:
    settings = {"auth": {"streams": {"cam": {"publish_token": "pub-secret"}}}, "forwarding": {"takeover_idle": 0}}
    async with relay_with(settings) as running:
        tracks = [TestPatternTrack(160, 120), ToneTrack()]
        async with WhipClient(running.url("/whip/cam"), tracks, video_codec="VP8", token="pub-secret") as first:
            async with WhepClient(running.url("/whep/cam")) as viewer:
                await first_stamp(viewer)
                second = WhipClient(running.url("/whip/cam"), [ToneTrack()], token="pub-secret")
                await second.start()
                try:
                    await running.wait_until(lambda: first.ended.is_set() and viewer.ended.is_set(), timeout=5)
                    stream = running.ctx.streams.get("cam")
                    assert stream is not None and stream.live and set(stream.tracks) == {"audio"}
                finally:
                    await second.close()


async def test_takeover_idle_zero_never_replaces_without_the_token() -> None:
    async with relay_with({"forwarding": {"takeover_idle": 0}}) as running:
        async with WhipClient(running.url("/whip/cam"), [ToneTrack()]) as first:
            for sender in first.pc.getSenders() if first.pc else []:
                if sender.track is not None:
                    sender.track.stop()
            stream = running.ctx.streams.get("cam")
            await running.wait_until(lambda: stream is not None and stream.idle_for() > 1, timeout=5)
            try:
                await WhipClient(running.url("/whip/cam"), [ToneTrack()], timeout=2).start()
            except SessionError as exc:
                assert exc.status == 409 and exc.retry_after is None
            else:
                raise AssertionError("a second publisher replaced the first without the token")
