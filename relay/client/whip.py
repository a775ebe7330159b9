"""A WHIP (RFC 9725) client: publishes aiortc tracks, encoded or not."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from relay.client.session import Client
from relay.media import aiortc_patch
from relay.sdp import FORWARD_ONLY, capabilities, client_capabilities


def _mime(kind: str, codec: str) -> str:
    mime = f"{kind}/{codec}"
    if mime.lower() in FORWARD_ONLY or not any(c.mimeType.lower() == mime.lower() for c in capabilities(mime)):
        raise ValueError(f"aiortc cannot send {kind} as {codec}")
    return mime


class WhipClient(Client):
    """Publishes aiortc tracks to a WHIP endpoint.

    `video_codec`/`audio_codec` ("VP8", "H264", "opus") restrict the offer to
    one codec. Tracks of the kinds in `packets` yield encoded `av.Packet`s
    (e.g. `MediaPlayer(path, decode=False)`) in that codec: they are only
    packetized, no encoder is ever created for them. `video_bitrate` (bps)
    caps the video encoder and `keyframe_interval` (s) forces regular keyframes.
    `start()` returns once ICE and DTLS are up: only then is the stream live.
    `data_channels=["telemetry", ...]` opens those data channels (ordered,
    reliable); `send(label, message)` sends text or bytes to every viewer
    with a channel of that label, and `channels[label]` receives (on `chat`).
    """

    # A 409 with Retry-After: the stream's publisher went silent and may be replaced then.
    retry_statuses = (409, 429, 503)

    def __init__(
        self,
        url: str,
        tracks: list[MediaStreamTrack],
        video_codec: str | None = None,
        audio_codec: str | None = None,
        packets: Collection[str] = (),
        video_bitrate: int | None = None,
        keyframe_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, **kwargs)
        self._tracks = tracks
        self._pinned = {k: _mime(k, c) for k, c in (("video", video_codec), ("audio", audio_codec)) if c}
        missing = [k for k in packets if k not in self._pinned]
        if missing:
            raise ValueError(f"name the codec of the encoded {' and '.join(missing)} (video_codec=/audio_codec=)")
        self._packets = set(packets)
        self._video_bitrate = video_bitrate
        self._keyframe_interval = keyframe_interval
        self.transceivers: dict[str, RTCRtpTransceiver] = {}

    async def start(self) -> None:
        await super().start()
        try:
            await self.wait_connected()
        except BaseException:
            await self.close()
            raise

    def _prepare(self) -> None:
        assert self.pc is not None
        for track in self._tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            mime = self._pinned.get(track.kind)
            if mime:
                transceiver.setCodecPreferences(capabilities(mime))
                if track.kind in self._packets:  # pinned: __init__ refuses packets of an unnamed codec
                    aiortc_patch.use_packer(transceiver.sender, mime)
            else:
                transceiver.setCodecPreferences(client_capabilities(track.kind))
            self.transceivers[track.kind] = transceiver

    async def _apply_answer(self, answer: str) -> None:
        await super()._apply_answer(answer)
        name = self.codecs.get("video", "")
        video = self.transceivers.get("video")
        tuned = self._video_bitrate or self._keyframe_interval
        if video and tuned and "video" not in self._packets and name.lower() in ("vp8", "h264"):
            aiortc_patch.tune_encoder(video.sender, f"video/{name}", self._video_bitrate, self._keyframe_interval)
