"""Janus as the bench's reference server: started, driven through the facade, stopped, cleaned up.

A smoke test of the benchmark's Janus rig, not of anyone's speed: the measuring
viewer must decode the publisher's stamped frames through Janus, a load viewer
must receive authentic SRTP, and afterwards no Janus, veth or config is left.
Fails instead of skipping without Janus when RELAY_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import aiohttp
import pytest

from bench.janus import JanusApi, facade, janus_binary, janus_process
from bench.measure import LOOP_GOP, SHORT, SIZES, Rig, free_port
from bench.netns import VETH, _link_exists


def _unavailable(reason: str) -> None:
    if os.environ.get("RELAY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (RELAY_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def janus_installed() -> None:
    if janus_binary() is None:
        _unavailable("Janus is not installed (apt-get install janus)")
    if not shutil.which("ip"):
        _unavailable("the Janus rig needs `ip` (iproute2) for its veth pair")


def janus_config_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("relay-bench-janus-*"))


async def test_viewers_decode_the_publishers_stamps_through_janus(tmp_path: Path) -> None:
    before = janus_config_dirs()
    plan = dataclasses.replace(SHORT, load_processes=1, servers=["janus"])
    async with Rig("janus", plan, tmp_path) as rig:
        assert _link_exists(VETH[0]), "Janus needs its veth end inside the namespace"
        info = await rig.publish("smoke", "loop", SIZES["480p"], LOOP_GOP, honor_pli=False)
        assert await rig.set_viewers(1) == 0, rig.join_errors
        await rig.window(2, 2.0)  # the viewers settle on a keyframe
        step = await rig.window(2, 3.0)
        janus = rig.server
    assert janus is not None and janus.returncode is not None, "the bench left Janus running"
    assert not _link_exists(VETH[0]), "the bench left its veth pair behind"
    assert janus_config_dirs() <= before, "the bench left Janus's temporary config behind"
    # The probe counts only frames whose stamp it read: Janus forwarded the publisher's picture.
    assert step.fps > 20 and step.missing_frames < 10, step
    assert step.srtp_sampled > 0 and step.srtp_authentic == step.srtp_sampled, step
    assert info["video_bps"] * 0.8 < step.bits_per_s < info["video_bps"] * 1.5, step
    assert step.server_cpu > 0, "no CPU charged to the janus process"


async def test_janus_takes_one_event_loop_from_the_benchs_config(tmp_path: Path) -> None:
    janus_port, facade_port = free_port(), free_port()
    async with janus_process(janus_port, 1, None, tmp_path / "janus.log") as process, facade(janus_port, facade_port):
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        config = Path(argv[argv.index(b"-C") + 1].decode())
        assert "event_loops = 1" in config.read_text()
        api = JanusApi(f"http://127.0.0.1:{janus_port}/janus")
        await api.start()
        try:
            assert await api.attach() > 0
        finally:
            await api.close()
        async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{facade_port}/whep/nothing", data="v=0", headers={"Content-Type": "application/sdp"}
        ) as response:
            assert response.status == 409, "a stream nobody publishes must be refused"
    assert not config.exists(), "the bench left Janus's temporary config behind"
