"""`python -m bench --from results.json --plot DIR`: the tables with Janus's columns, and the charts.

Runs on a small made-up result set (the shape `bench.measure.run` writes), so
it takes seconds; test_bench.py checks that a real run produces that shape.
Fails instead of skipping without matplotlib when RELAY_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from bench.plot import CPU_CHART, JOIN_CHART
from bench.probe import is_freeze

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def step(viewers: int, cpu: float, pps: float) -> dict[str, Any]:
    return {
        "viewers": viewers, "seconds": 4.0, "server_cpu": cpu, "server_kernel": cpu / 5, "server_core_busy": cpu,
        "load_cpu": 0.3, "loadgen_us_per_packet": 8.0, "load_core_busy": 0.4, "rss_mb": 90 + viewers,
        "packets_per_s": pps * viewers, "bits_per_s": 1.1e6, "fps": 30.0, "rtp_loss": 0.0, "missing_frames": 0,
        "probe_max_gap_ms": 40.0, "load_loss": 0.0, "silent": 0, "srtp_sampled": 10, "srtp_authentic": 10,
        "join_failures": 0, "ok": True, "limit": "",
    }


def sweep(server: str, size: str, per_viewer: float, pps: float) -> dict[str, Any]:
    counts = [0, 1, 16, 48]
    return {
        "server": server, "size": size, "video_bps": 1e6, "cpu_per_viewer": per_viewer, "idle_cpu": 0.05,
        "us_per_packet": per_viewer * 1e6 / pps, "kernel_us_per_packet": 4.0, "rss_mb_per_viewer": 0.5,
        "projected_viewers_per_core": 0.95 / per_viewer, "capacity": 48, "capacity_limit": "plan ended at 48 viewers",
        "steps": [step(n, 0.05 + per_viewer * n, pps) for n in counts],
    }


def results() -> dict[str, Any]:
    servers = {"relay": 0.006, "janus": 0.003, "janus-el1": 0.002, "baseline": 0.15}
    joins = [{"server": s, "gop_s": g, "publisher_honors_pli": True, "samples": 3, "failures": [], "p50_ms": 100.0,
              "p95_ms": 150.0, "max_ms": 160.0, "join_ms": [90.0, 100.0, 160.0]}
             for s in ("relay", "janus", "baseline") for g in (1.0, 4.0)]
    crowd = [{"server": s, "gop_s": 1.0, "publisher_honors_pli": p, "crowd": 32, "samples": 32, "failures": [],
              "p50_ms": 200.0, "p95_ms": 400.0, "max_ms": 500.0, "join_ms": [200.0 + i for i in range(32)]}
             for s in ("relay", "janus") for p in (True, False)]
    latency = [{"server": s, "load_viewers": 0, "join_failures": 0, "via_p50_ms": 44.0, "via_p95_ms": 50.0,
                "direct_p50_ms": 43.0, "direct_p95_ms": 48.0, "added_p50_ms": 1.0, "added_p95_ms": 2.0,
                "via_fps": 30.0, "direct_fps": 30.0, "frames": 200} for s in ("relay", "janus", "baseline")]
    loss = [{"server": s, "loss": p, "viewers": 4, "join_failures": 0, "seconds": 10.0, "fps": 29.0, "freezes": 1,
             "frozen_s": 0.3, "frames_lost": 2, "rtp_loss": p, "max_gap_ms": 300.0, "latency_p50_ms": 45.0,
             "latency_p95_ms": 60.0} for s in ("relay", "janus") for p in (0.0, 0.02, 0.05)]
    return {
        "sweeps": [sweep(s, size, c * k, pps) for s, c in servers.items()
                   for size, k, pps in (("480p", 1.0, 170.0), ("720p", 1.3, 300.0))],
        "recording": [], "joins": joins, "crowd": crowd, "latency": latency, "loss": loss,
        "machine": {"date": "2026-11-29 18:00 UTC"}, "command": "python -m bench --plot", "seconds": 900.0,
    }


def test_tables_and_charts_from_a_saved_run(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        if os.environ.get("RELAY_REQUIRE_BROWSER") == "1":
            pytest.fail("bench --plot needs matplotlib: pip install -e '.[bench]' (RELAY_REQUIRE_BROWSER=1)")
        pytest.skip("bench --plot needs matplotlib (pip install -e '.[bench]')")
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(results()))
    run = subprocess.run([sys.executable, "-m", "bench", "--from", str(saved), "--plot", str(tmp_path / "docs")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    header = next(line for line in run.stdout.splitlines() if line.startswith("|  | Relay |"))
    for column in ("Janus", "Janus, event_loops = 1", "Relay / Janus", "Relay / Janus, event_loops = 1"):
        assert f"| {column} |" in header, header
    # Relay costs twice Janus's CPU per viewer in the made-up run: the ratio says so.
    row = next(line for line in run.stdout.splitlines() if line.startswith("| CPU per viewer, % of a core |"))
    assert "| 2× |" in row, row
    assert "| Relay | 5% | 29.0 | 1 | 0.30 (3.0%) | 2 |" in run.stdout
    for chart in (CPU_CHART, JOIN_CHART):
        data = (tmp_path / "docs" / chart).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, chart


def test_a_freeze_is_what_webrtc_stats_calls_one() -> None:
    steady = deque([1 / 30] * 30, maxlen=30)
    assert not is_freeze(0.15, steady)  # 3 × 33 ms but under avg + 150 ms
    assert is_freeze(0.19, steady)
    slow = deque([0.1] * 30, maxlen=30)
    assert not is_freeze(0.29, slow)  # under 3 × avg
    assert is_freeze(0.31, slow)
    assert not is_freeze(5.0, deque(maxlen=30)), "no average yet, no freeze"
