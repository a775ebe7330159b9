"""The aiortc patches keep aiortc's own semantics."""

from __future__ import annotations

import aiortc.clock

from relay.media import aiortc_patch


def test_fast_ntp_clock_reads_the_same_time() -> None:
    aiortc_patch.use_fast_ntp_clock()
    ours = aiortc.clock.current_ntp_time()
    theirs = aiortc.clock.datetime_to_ntp(aiortc.clock.current_datetime())
    assert abs(theirs - ours) / 2**32 < 0.005
    assert aiortc.clock.datetime_from_ntp(ours).year == aiortc.clock.current_datetime().year
