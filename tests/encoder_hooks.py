"""Counting hooks on every way aiortc can create an encoder, to prove none was.

`install(setter)` wraps aiortc's `get_encoder`, the VP8/H.264 `encode`
methods, `OpusEncoder()` (which opens libopus at once) and PyAV's
`CodecContext.create` for writing, in the process it runs in. As a script,
`python -m tests.encoder_hooks ARGS...` installs them, runs `relay ARGS...`
and writes the counts as JSON to $ENCODER_COUNTS when the CLI exits.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiortc.codecs
import aiortc.codecs.g711
import aiortc.codecs.g722
import aiortc.codecs.opus
import aiortc.codecs.vpx
import aiortc.rtcrtpsender
import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder

Setter = Callable[[Any, str, Any], None]


def install(setter: Setter = setattr) -> Counter[str]:
    """Install the hooks with `setter` (e.g. pytest's monkeypatch.setattr); returns the live counts."""
    counts: Counter[str] = Counter()
    real_get_encoder = aiortc.codecs.get_encoder
    real_codec_context = av.CodecContext

    def get_encoder(codec: Any) -> Any:
        counts["get_encoder"] += 1
        return real_get_encoder(codec)

    class CountingCodecContext:
        @staticmethod
        def create(codec: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if mode == "w":
                counts[f"CodecContext.create({codec}, w)"] += 1
            return real_codec_context.create(codec, mode, *args, **kwargs)

    def counted(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return func(*args, **kwargs)

        return wrapper

    setter(aiortc.codecs, "get_encoder", get_encoder)
    setter(aiortc.rtcrtpsender, "get_encoder", get_encoder)
    setter(av, "CodecContext", CountingCodecContext)
    for module in (aiortc.codecs.opus, aiortc.codecs.vpx, aiortc.codecs.g711, aiortc.codecs.g722):
        setter(module, "CodecContext", CountingCodecContext)
    setter(Vp8Encoder, "encode", counted("Vp8Encoder.encode", Vp8Encoder.encode))
    setter(H264Encoder, "encode", counted("H264Encoder.encode", H264Encoder.encode))
    setter(OpusEncoder, "__init__", counted("OpusEncoder()", OpusEncoder.__init__))
    return counts


def main() -> int:
    counts = install()
    path = os.environ["ENCODER_COUNTS"]
    atexit.register(lambda: open(path, "w").write(json.dumps(counts)))
    from relay.cli import main as relay_main

    return relay_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
