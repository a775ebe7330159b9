"""`python -m bench --short` still works and its numbers make sense.

A smoke test of the benchmark itself, not of Relay's speed: it checks that
every experiment produced numbers, that the load viewers really received
authentic SRTP at the publisher's bitrate, and that the figures are in
ranges only a working benchmark gives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHORT_MODE_LIMIT = 180.0


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--short", "--json", str(out / "results.json"), "--logs", str(out / "logs")],
        cwd=ROOT, capture_output=True, text=True, timeout=SHORT_MODE_LIMIT + 60, check=False,
    )
    assert run.returncode == 0, f"python -m bench --short failed:\n{run.stderr[-4000:]}"
    assert "| marginal CPU-µs per forwarded packet per viewer (with audio) |" in run.stdout, run.stdout
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def sweep(results: dict[str, Any], server: str) -> dict[str, Any]:
    return next(s for s in results["sweeps"] if s["server"] == server and s["size"] == "480p")


def test_short_mode_fits_in_ci(results: dict[str, Any]) -> None:
    assert results["seconds"] < SHORT_MODE_LIMIT


def test_load_viewers_receive_authentic_srtp_at_the_publishers_bitrate(results: dict[str, Any]) -> None:
    relay = sweep(results, "relay")
    assert 0.8e6 < relay["video_bps"] < 1.2e6, "the 480p loop is not ~1 Mbps"
    loaded = [s for s in relay["steps"] if s["viewers"] > 1]
    assert loaded, "the Relay sweep never had load viewers"
    for step in loaded:
        assert step["srtp_sampled"] > 0 and step["srtp_authentic"] == step["srtp_sampled"], step
        # Relay forwards the publisher's VP8 (~1 Mbps) and Opus untouched: nothing re-encodes it.
        assert relay["video_bps"] < step["bits_per_s"] < relay["video_bps"] * 1.4, step
        assert 100 < step["packets_per_s"] / step["viewers"] < 300, step
        assert step["load_loss"] < 0.05, step


def test_cpu_figures_are_sane_and_relay_beats_the_baseline(results: dict[str, Any]) -> None:
    relay, baseline = sweep(results, "relay"), sweep(results, "baseline")
    for s in (relay, baseline):
        assert len(s["steps"]) >= 3 and s["steps"][0]["viewers"] == 0, s
        assert all(0 < step["server_cpu"] < 1.1 for step in s["steps"]), s
        assert s["steps"][1]["fps"] > 20, "the measuring viewer barely decodes"
        assert s["cpu_per_viewer"] is not None and s["us_per_packet"] is not None, s
    assert 0 < relay["us_per_packet"] < 1000
    # Decoding once and encoding per viewer costs an order of magnitude more per viewer.
    assert relay["cpu_per_viewer"] * 5 < baseline["cpu_per_viewer"]


def test_join_times_and_latency_were_measured(results: dict[str, Any]) -> None:
    for join in results["joins"]:
        assert join["samples"] >= 3 and not join["failures"], join
        assert 0 < join["p50_ms"] <= join["p95_ms"] < 10_000, join
    assert {(j["server"], j["gop_s"]) for j in results["joins"]} >= {("relay", 4.0), ("baseline", 4.0)}
    for latency in results["latency"]:
        assert latency["frames"] > 30 and latency["direct_fps"] > 20, latency
        assert 0 < latency["direct_p50_ms"] < 1000, latency
        assert -50 < latency["added_p50_ms"] < 1000, latency
    assert {r["server"] for r in results["latency"]} == {"relay", "baseline"}


def test_recording_cost_was_measured_on_a_real_recording(results: dict[str, Any]) -> None:
    by_server = {r["server"]: r for r in results["recording"]}
    relay = by_server["relay"]
    # Several seconds of a ~1 Mbps stream were remuxed to disk while the probe still decoded it.
    assert relay["bytes_written"] > 100_000, relay
    assert relay["frames_sent"] * 0.5 < relay["frames_written"] <= relay["frames_sent"], relay
    assert relay["probe_fps"] > 20 and relay["cpu_on"] > 0, relay
    assert by_server["baseline"]["cpu_per_stream"] is not None


def test_flash_crowd_joins_were_timed(results: dict[str, Any]) -> None:
    crowds = [c for c in results["crowd"] if c["server"] == "relay"]
    assert {c["publisher_honors_pli"] for c in crowds} == {True, False}, crowds
    for crowd in crowds:
        assert crowd["samples"] == crowd["crowd"] and not crowd["failures"], crowd
        assert 0 < crowd["p50_ms"] <= crowd["p95_ms"] < 15_000, crowd


def test_loss_is_applied_on_both_hops_and_reported(results: dict[str, Any]) -> None:
    if not shutil.which("iptables"):
        if os.environ.get("RELAY_REQUIRE_BROWSER") == "1":
            pytest.fail("the bench's loss needs iptables (RELAY_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip("the bench's loss needs iptables (apt-get install iptables)")
    by_loss = {r["loss"]: r for r in results["loss"] if r["server"] == "relay"}
    assert set(by_loss) == {0.0, 0.05}, by_loss
    clean, lossy = by_loss[0.0], by_loss[0.05]
    assert clean["fps"] > 20 and clean["latency_p95_ms"] is not None, clean
    assert clean["load_loss"] < 0.01, clean
    # Load viewers send no NACK: they see at least their own hop's 5 % as sequence gaps (plus
    # whatever of the publisher's hop the server neither repaired nor hid by renumbering).
    assert 0.03 < lossy["load_loss"] < 0.15, lossy
    assert lossy["fps"] > 0 and lossy["freezes"] >= 0 and lossy["frozen_s"] <= lossy["seconds"], lossy
