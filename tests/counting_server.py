"""`relay serve` with counters on every aiortc encoder and decoder.

Run as a subprocess by tests/server/test_no_transcoding.py: on exit it writes the counts
to $RELAY_CODEC_COUNTS, so the test sees what the server process created.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections import Counter
from typing import Any

import aiortc.codecs
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
from aiortc.codecs.h264 import H264Decoder, H264Encoder
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder

counts: Counter[str] = Counter()


def counting(name: str, func: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return func(*args, **kwargs)

    return wrapper


for module in (aiortc.codecs, aiortc.rtcrtpsender, aiortc.rtcrtpreceiver):
    for name in ("get_encoder", "get_decoder"):
        if hasattr(module, name):
            setattr(module, name, counting(name, getattr(module, name)))
for cls in (Vp8Decoder, H264Decoder, OpusDecoder, OpusEncoder):
    cls.__init__ = counting(f"{cls.__name__}()", cls.__init__)
for cls in (Vp8Encoder, H264Encoder, OpusEncoder):
    cls.encode = counting(f"{cls.__name__}.encode", cls.encode)
for cls in (Vp8Decoder, H264Decoder, OpusDecoder):
    cls.decode = counting(f"{cls.__name__}.decode", cls.decode)

# The hooks must see what they are meant to see, or the test proves nothing.
OpusDecoder()
aiortc.rtcrtpreceiver.get_decoder(aiortc.codecs.get_capabilities("audio").codecs[0])
assert counts["OpusDecoder()"] == 2 and counts["get_decoder"] == 1, counts
counts.clear()


@atexit.register
def report() -> None:
    with open(os.environ["RELAY_CODEC_COUNTS"], "w") as out:
        json.dump(counts, out)


if __name__ == "__main__":
    from relay.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
