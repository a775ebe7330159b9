"""A GStreamer 1.22 webrtcbin WHIP publisher or WHEP viewer, run by the system Python (GI).

Debian's GStreamer has no whipsink/whepsrc, so this drives webrtcbin the way they do:
max-bundle, the offer POSTed once ICE gathering is complete, the answer applied, DELETE at
the end. It imports nothing but the standard library and `gi` (the test's venv has no `gi`,
the system Python has no Relay). One JSON object per line on stdout says what happened:

  {"event": "offer", "sdp": ...}            the offer as POSTed (or only printed with --print-offer)
  {"event": "answer", "status": 201, ...}   the server's answer
  {"event": "video", "frames": n, ...}      view: decoded video frames so far, first frames saved raw
  {"event": "audio", "buffers": n, "peak": p}  view: decoded audio, peak absolute sample
  {"event": "done", ...}                    after DELETE

Usage: gst_peer.py publish|view URL [--seconds S] [--video-file RAW --width W --height H]
       [--frames-dir DIR] [--print-offer]
"""

import argparse
import array
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VIDEO_CAPS = "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"
AUDIO_CAPS = "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,encoding-params=(string)2"
SAVED_FRAMES = 5


_SAYING = threading.Lock()


def say(event: str, **fields) -> None:
    """One JSON line on stdout; GStreamer's streaming threads say things too, so one write under a lock."""
    line = json.dumps({"event": event, **fields}) + "\n"
    with _SAYING:
        sys.stdout.write(line)
        sys.stdout.flush()


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict, str]:
    headers = {"Content-Type": "application/sdp"} if body is not None else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.session_url: str | None = None
        self.video_frames = 0
        self.audio_buffers = 0
        self.audio_peak = 0
        self.failed = False
        if args.mode == "publish":
            self.pipe = Gst.parse_launch(self.publish_pipeline())
            self.webrtc = self.pipe.get_by_name("w")
            for transceiver in self.transceivers():
                transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        else:
            self.pipe = Gst.Pipeline.new("view")
            self.webrtc = Gst.ElementFactory.make("webrtcbin", "w")
            self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
            self.pipe.add(self.webrtc)
            for caps in (VIDEO_CAPS, AUDIO_CAPS):
                self.webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                                 Gst.Caps.from_string(caps))
            self.webrtc.connect("pad-added", self.on_pad_added)
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering_state)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)

    def publish_pipeline(self) -> str:
        a = self.args
        if a.video_file:
            video = (f"filesrc location={a.video_file} ! rawvideoparse width={a.width} height={a.height} "
                     f"format=i420 framerate=30/1 ! clocksync")
        else:
            video = (f"videotestsrc is-live=true pattern=smpte ! "
                     f"video/x-raw,width={a.width},height={a.height},framerate=30/1")
        return (
            "webrtcbin name=w bundle-policy=max-bundle "
            f"{video} ! videoconvert ! vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay ! {VIDEO_CAPS} ! w. "
            "audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audioconvert ! audioresample ! "
            f"opusenc ! rtpopuspay ! {AUDIO_CAPS} ! w."
        )

    def transceivers(self) -> list:
        found, index = [], 0
        while (t := self.webrtc.emit("get-transceiver", index)) is not None:
            found.append(t)
            index += 1
        return found

    def run(self) -> int:
        self.pipe.set_state(Gst.State.PLAYING)
        GLib.timeout_add(int(self.args.seconds * 1000), self.finish)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return 1 if self.failed else 0

    def fail(self, why: str) -> None:
        say("error", message=why)
        self.failed = True
        self.finish()

    def finish(self) -> bool:
        if self.session_url:
            status, _, _ = http("DELETE", self.session_url)
            say("done", delete=status, video_frames=self.video_frames, audio_buffers=self.audio_buffers,
                audio_peak=self.audio_peak)
            self.session_url = None
        self.loop.quit()
        return False

    def on_error(self, _bus, message) -> None:
        err, debug = message.parse_error()
        self.fail(f"{err.message} ({debug})")

    def on_negotiation_needed(self, element) -> None:
        promise = Gst.Promise.new_with_change_func(self.on_offer_created, None)
        element.emit("create-offer", None, promise)

    def on_offer_created(self, promise, _data) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            GLib.idle_add(self.fail, f"webrtcbin made no offer: {reply}")
            return
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_gathering_state(self, element, _param) -> None:
        if element.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return
        GLib.idle_add(self.post_offer)

    def post_offer(self) -> bool:
        sdp = self.webrtc.get_property("local-description").sdp.as_text()
        say("offer", sdp=sdp)
        if self.args.print_offer:
            self.finish()
            return False
        status, headers, body = http("POST", self.args.url, sdp.encode())
        say("answer", status=status, sdp=body if status == 201 else None, body=None if status == 201 else body)
        if status != 201:
            self.fail(f"POST answered {status}")
            return False
        self.session_url = urllib.parse.urljoin(self.args.url, headers["Location"])
        ok, message = GstSdp.SDPMessage.new_from_text(body)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        return False

    def on_pad_added(self, _element, pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps().get_structure(0)
        kind, codec = caps.get_string("media"), caps.get_string("encoding-name").upper()
        if kind == "video":
            decode = {"VP8": "rtpvp8depay ! vp8dec", "H264": "rtph264depay ! openh264dec"}[codec]
            tail = "videoconvert ! video/x-raw,format=I420 ! appsink name=sink emit-signals=true sync=false"
        else:
            decode = "rtpopusdepay ! opusdec"
            tail = ("audioconvert ! audioresample ! audio/x-raw,format=S16LE,channels=1,rate=48000 ! "
                    "appsink name=sink emit-signals=true sync=false")
        branch = Gst.parse_bin_from_description(f"queue ! {decode} ! {tail}", True)
        self.pipe.add(branch)
        branch.sync_state_with_parent()
        pad.link(branch.get_static_pad("sink"))
        sink = branch.get_by_name("sink")
        sink.connect("new-sample", self.on_video_sample if kind == "video" else self.on_audio_sample)

    def on_video_sample(self, sink) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        structure = sample.get_caps().get_structure(0)
        width, height = structure.get_int("width")[1], structure.get_int("height")[1]
        self.video_frames += 1
        if self.args.frames_dir and self.video_frames % 10 == 0 and self.video_frames // 10 <= SAVED_FRAMES:
            buffer = sample.get_buffer()
            data = buffer.extract_dup(0, buffer.get_size())
            name = f"{self.args.frames_dir}/frame-{self.video_frames:04d}-{width}x{height}.i420"
            with open(name, "wb") as out:
                out.write(data)
        if self.video_frames % 30 == 1:
            say("video", frames=self.video_frames, width=width, height=height)
        return Gst.FlowReturn.OK

    def on_audio_sample(self, sink) -> Gst.FlowReturn:
        buffer = sink.emit("pull-sample").get_buffer()
        samples = array.array("h", buffer.extract_dup(0, buffer.get_size()))
        self.audio_buffers += 1
        if samples:
            self.audio_peak = max(self.audio_peak, max(abs(s) for s in samples))
        if self.audio_buffers % 50 == 1:
            say("audio", buffers=self.audio_buffers, peak=self.audio_peak)
        return Gst.FlowReturn.OK


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["publish", "view"])
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--video-file")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--frames-dir")
    parser.add_argument("--print-offer", action="store_true")
    args = parser.parse_args()
    Gst.init(None)
    return Peer(args).run()


if __name__ == "__main__":
    sys.exit(main())
