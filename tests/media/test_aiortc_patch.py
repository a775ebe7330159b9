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
    theirs_ms = int((aiortc.clock.current_datetime() - aiortc.clock.NTP_EPOCH).total_seconds() * 1000)
    assert abs(aiortc.clock.current_ms() - theirs_ms) < 5, "arrival times are NTP milliseconds, as aiortc's"
