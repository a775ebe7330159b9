"""Chromium publishes simulcast (three sendEncodings): Relay takes every layer and forwards the full one."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.client import WhepClient

from ..conftest import RunningRelay
from .conftest import page_errors

WIDTH, HEIGHT = 1280, 720

# WHIP by hand, as an application that asks for simulcast does it (the publish page sends one layer).
# The layers' ceilings add up to less than Chromium's starting bandwidth estimate (300 kbps): without
# transport-wide congestion control (aiortc has none) its estimate grows by a few % a second, and it
# would take minutes to start a full layer of a higher rate.
PUBLISH_SIMULCAST = """
async ([url, width, height]) => {
  const stream = await navigator.mediaDevices.getUserMedia({video: {width, height}, audio: true});
  const pc = new RTCPeerConnection({bundlePolicy: "max-bundle"});
  pc.addTransceiver(stream.getVideoTracks()[0], {direction: "sendonly", streams: [stream], sendEncodings: [
    {rid: "q", scaleResolutionDownBy: 4, maxBitrate: 50000}, {rid: "h", scaleResolutionDownBy: 2, maxBitrate: 100000},
    {rid: "f", maxBitrate: 300000}]});
  pc.addTransceiver(stream.getAudioTracks()[0], {direction: "sendonly", streams: [stream]});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(resolve => {
    if (pc.iceGatheringState === "complete") resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
  });
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/sdp"},
                                     body: pc.localDescription.sdp});
  const answer = await response.text();
  if (response.status !== 201) throw new Error(`POST ${response.status}: ${answer}`);
  await pc.setRemoteDescription({type: "answer", sdp: answer});
  window.simulcast = {pc, session: response.headers.get("Location")};
  return pc.getSenders().find(s => s.track.kind === "video").getParameters().encodings.map(e => e.rid);
}
"""

LAYERS_SENT = """
async () => {
  const sent = {};
  for (const s of (await window.simulcast.pc.getStats()).values()) {
    if (s.type === "outbound-rtp" && s.kind === "video" && s.rid) sent[s.rid] = [s.frameWidth || 0, s.framesSent || 0];
  }
  return sent;
}
"""


async def test_chromium_simulcast_viewer_gets_the_full_layer_only(relay: RunningRelay, new_page: Any) -> None:
    page = await new_page()
    await page.goto(relay.url("/watch/sim"))  # any page of Relay's origin: a secure context (localhost)
    rids = await page.evaluate(PUBLISH_SIMULCAST, [relay.url("/whip/sim"), WIDTH, HEIGHT])
    assert rids == ["q", "h", "f"], "the answer did not keep Chromium's three layers"
    await relay.wait_until(lambda: bool((s := relay.ctx.streams.get("sim")) and s.live), 20)
    try:
        async with WhepClient(relay.url("/whep/sim")) as viewer:
            async with asyncio.timeout(45):  # Chromium starts the full layer once its bandwidth estimate allows
                while "video" not in viewer.tracks:
                    await asyncio.sleep(0.05)
                sizes = []
                while len(sizes) < 60:
                    frame = await viewer.tracks["video"].recv()
                    sizes.append((frame.width, frame.height))
            sent = await page.evaluate(LAYERS_SENT)
        assert set(sizes) == {(WIDTH, HEIGHT)}, f"the viewer saw other layers: {sorted(set(sizes))}; sent {sent}"
        assert len([rid for rid, (_, frames) in sent.items() if frames]) >= 2, f"Chromium sent one layer: {sent}"
    finally:
        await page.evaluate("fetch(window.simulcast.session, {method: 'DELETE'})")
        await page.evaluate("window.simulcast.pc.close()")
    assert not page_errors(page)
