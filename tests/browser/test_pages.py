"""The pages in real Chromium: publish the fake camera, watch it twice, stop, resume.

Runs inside the suite's loopback-only namespace, against an in-process Relay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay.client import WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..conftest import RunningRelay, start_relay
from .conftest import assert_playing, page_errors, wait_js, wait_status


async def test_publish_watch_twice_stop_and_resume(
    relay: RunningRelay, new_page: Any, artifacts_dir: Path
) -> None:
    early = await new_page()  # opened before anyone publishes
    await early.goto(relay.url("/watch/cam"))
    await wait_status(early, "waiting")
    await early.screenshot(path=artifacts_dir / "watch-waiting.png")

    publisher = await new_page()
    await publisher.goto(relay.url("/publish/cam"))
    await publisher.click("#start")
    await wait_js(publisher, "window.relayPublish && window.relayPublish.state === 'live'")
    await wait_status(publisher, "live")

    await assert_playing(early)
    second = await new_page()
    await second.goto(relay.url("/watch/cam"))
    await assert_playing(second)
    await relay.wait_until(lambda: len(relay.ctx.streams.get("cam").viewers) == 2)
    await wait_js(second, "document.querySelector('#viewers').textContent.trim() === '2'")
    await publisher.screenshot(path=artifacts_dir / "publish-live.png")
    await second.screenshot(path=artifacts_dir / "watch-live.png")

    dashboard = await new_page()
    await dashboard.goto(relay.url("/"))
    await wait_js(dashboard, "document.querySelector('tr[data-stream=\"cam\"][data-live=\"true\"]')")
    await dashboard.screenshot(path=artifacts_dir / "dashboard-live.png")

    await publisher.click("#stop")
    await wait_status(early, "waiting")
    await wait_status(second, "waiting")
    await wait_js(dashboard, "document.querySelector('tr[data-stream=\"cam\"][data-live=\"false\"]')")
    await dashboard.screenshot(path=artifacts_dir / "dashboard-offline.png")
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)

    await publisher.click("#start")  # publishing again resumes the watch pages without reload
    await wait_js(publisher, "window.relayPublish.state === 'live'")
    await assert_playing(early)
    await assert_playing(second)
    await wait_js(dashboard, "document.querySelector('tr[data-stream=\"cam\"][data-live=\"true\"]')")
    await second.emulate_media(color_scheme="dark")  # as a phone in dark mode would show it
    await second.set_viewport_size({"width": 390, "height": 844})
    await second.screenshot(path=artifacts_dir / "watch-phone-dark.png")

    for page in (early, second, publisher, dashboard):
        assert page_errors(page) == []


async def test_dashboard_records_lists_and_plays_a_recording(
    new_page: Any, artifacts_dir: Path, tmp_path: Path
) -> None:
    relay = await start_relay({"recording": {"dir": str(tmp_path / "rec")}})
    try:
        video = TestPatternTrack(320, 240)
        async with WhipClient(relay.url("/whip/rec"), [video, ToneTrack()]):
            dashboard = await new_page()
            await dashboard.goto(relay.url("/"))
            record = 'tr[data-stream="rec"] [data-action="record"]'
            await wait_js(dashboard,
                          f"document.querySelector('{record}') && !document.querySelector('{record}').disabled")
            await dashboard.click(record)
            await wait_js(dashboard, "document.querySelector('#recordings tr')")
            started = video.frames_sent
            await relay.wait_until(lambda: video.frames_sent >= started + 3 * 30)  # three seconds recorded
            await dashboard.click(record)  # stop
            await wait_js(dashboard, f"document.querySelector('{record}').textContent === 'Record'")
        await wait_js(dashboard, "[...document.querySelectorAll('#recordings tr')].some("
                                 "r => !r.textContent.includes('REC') && r.textContent.includes('VP8'))")
        await dashboard.click("#recordings tr .btn-primary")
        await wait_js(dashboard, "document.querySelector('#recording-video').currentTime > 1")
        size = await dashboard.evaluate("[document.querySelector('#recording-video').videoWidth,"
                                        " document.querySelector('#recording-video').duration]")
        assert size[0] == 320 and 2 < size[1] < 6
        await dashboard.screenshot(path=artifacts_dir / "dashboard-recording.png", full_page=True)
        assert page_errors(dashboard) == []
    finally:
        await relay.server.close()


async def test_browser_publishes_h264_and_a_browser_plays_it(relay: RunningRelay, new_page: Any) -> None:
    publisher = await new_page()
    await publisher.goto(relay.url("/publish/h264"))
    await publisher.select_option("#codec", "H264")
    await publisher.click("#start")
    await wait_js(publisher, "window.relayPublish && window.relayPublish.state === 'live'")
    viewer = await new_page()
    await viewer.goto(relay.url("/watch/h264"))
    await assert_playing(viewer)
    assert relay.ctx.streams.get("h264").tracks["video"].codec == "H264"
    assert page_errors(viewer) == [] and page_errors(publisher) == []


async def test_watch_page_shows_bot_events_and_dashboard_names_the_bot(new_page: Any, artifacts_dir: Path) -> None:
    from relay.server.bots import BOTS

    relay = await start_relay({"bots": [{"stream": "cam", "bot": "examples.motion:bot", "output": "cam-motion"}]})
    try:
        relay.server.app[BOTS].base_url = relay.url("").rstrip("/")  # the test server's port, not the config's
        async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(320, 240)]):
            watch = await new_page()
            await watch.goto(relay.url("/watch/cam"))
            await wait_js(watch, "!document.querySelector('#bot-event').hidden"
                          " && document.querySelector('#bot-event').textContent.startsWith('motion ')", 40_000)
            await watch.screenshot(path=artifacts_dir / "watch-bot-event.png")
            dashboard = await new_page()
            await dashboard.goto(relay.url("/"))
            await wait_js(dashboard, "(document.querySelector('tr[data-stream=\"cam-motion\"] .made-by') || {})"
                          ".textContent?.includes('made by bot examples.motion:bot from stream cam')", 40_000)
            await dashboard.screenshot(path=artifacts_dir / "dashboard-bot-output.png")
            for page in (watch, dashboard):
                assert page_errors(page) == []
    finally:
        await relay.server.close()
