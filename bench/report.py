"""The results as the Markdown tables of docs/benchmarks.md."""

from __future__ import annotations

from typing import Any

from relay.client.testpattern import AUDIO_PTIME

from .measure import FPS

GOAL_US_PER_PACKET = 10.0
GOAL_JOIN_P95_MS = 300.0
GOAL_ADDED_LATENCY_MS = 5.0


def _f(value: float | None, spec: str = ".1f", scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def _ratio(relay: float | None, baseline: float | None) -> str:
    if relay is None or baseline is None or baseline == 0:
        return "–"
    return f"{relay / baseline:.3g}×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _pps(sweep: dict[str, Any]) -> float | None:
    """Packets per second one viewer receives, from the largest passing window."""
    steps = [s for s in sweep["steps"] if s["ok"] and s["viewers"]]
    return steps[-1]["packets_per_s"] / steps[-1]["viewers"] if steps else None


def _cost(results: dict[str, Any]) -> list[str]:
    rows = []
    sweeps = {(s["server"], s["size"]): s for s in results["sweeps"]}
    metrics = [
        ("CPU per viewer, % of a core", "cpu_per_viewer", ".2f", 100),
        ("CPU-µs per forwarded packet per viewer", "us_per_packet", ".1f", 1),
        ("… of which in the kernel (sendto)", "kernel_us_per_packet", ".1f", 1),
        ("server CPU at 0 viewers (fit intercept), % of a core", "idle_cpu", ".1f", 100),
        ("RSS per viewer, MB", "rss_mb_per_viewer", ".2f", 1),
        ("viewers per core, projected from the fit", "projected_viewers_per_core", ".0f", 1),
        ("viewers measured at ≥ 29 fps, < 1 % loss, no freeze", "capacity", "d", 1),
    ]
    for size in dict.fromkeys(s["size"] for s in results["sweeps"]):
        relay, base = sweeps.get(("relay", size)), sweeps.get(("baseline", size))
        rows.append([f"**{size}**", "", "", ""])
        for label, key, spec, scale in metrics:
            r = relay.get(key) if relay else None
            b = base.get(key) if base else None
            rows.append([label, _f(r, spec, scale), _f(b, spec, scale), _ratio(r, b)])
        rows.append(["packets/s each viewer receives", _f(_pps(relay) if relay else None, ".0f"),
                     _f(_pps(base) if base else None, ".0f"), ""])
        rows.append(["what stopped the ramp", relay["capacity_limit"] if relay else "–",
                     base["capacity_limit"] if base else "–", ""])
    return _table(["", "Relay", "baseline (MediaRelay)", "Relay / baseline"], rows)


def _split(results: dict[str, Any]) -> list[str]:
    """Per-packet and per-frame parts of Relay's cost per viewer, from two sizes.

    Every size sends the same frames (FPS video + one Opus frame per
    AUDIO_PTIME) but a different number of packets, so two sizes give two
    equations: cost per viewer-second = a * packets/s + b * frames/s.
    """
    sweeps = [s for s in results["sweeps"] if s["server"] == "relay" and s["cpu_per_viewer"] and _pps(s)]
    if len(sweeps) < 2:
        return []
    (p1, c1), (p2, c2) = ((_pps(s), s["cpu_per_viewer"] * 1e6) for s in sweeps[:2])
    if p1 == p2:
        return []
    frames = FPS + 1 / AUDIO_PTIME
    per_packet = (c2 - c1) / (p2 - p1)
    per_frame = (c1 - per_packet * p1) / frames
    audio = (per_packet + per_frame) / AUDIO_PTIME / c1
    return [
        (f"Relay per viewer, solved from the {sweeps[0]['size']} and {sweeps[1]['size']} fits: about "
         f"{per_packet:.0f} µs per packet plus {per_frame:.0f} µs per frame ({frames:.0f} frames/s: {FPS} video, "
         f"{1 / AUDIO_PTIME:.0f} Opus); Opus, one packet per frame, is {audio:.0%} of a "
         f"{sweeps[0]['size']} viewer's cost."),
    ]


def _joins(results: dict[str, Any]) -> list[str]:
    base = {(j["gop_s"], j["publisher_honors_pli"]): j for j in results["joins"] if j["server"] == "baseline"}
    rows = []
    for j in results["joins"]:
        ref = base.get((j["gop_s"], j["publisher_honors_pli"])) if j["server"] == "relay" else None
        rows.append([
            "Relay" if j["server"] == "relay" else "baseline", f"{j['gop_s']:g} s",
            "yes" if j["publisher_honors_pli"] else "no", str(j["samples"]), str(len(j["failures"])),
            _f(j["p50_ms"], ".0f"), _f(j["p95_ms"], ".0f"), _f(j["max_ms"], ".0f"),
            _ratio(j["p95_ms"], ref["p95_ms"]) if ref else "",
        ])
    return _table(["server", "GOP", "publisher honours PLI", "joins", "failed", "p50 ms", "p95 ms", "max ms",
                   "p95 Relay / baseline"], rows)


def _latency(results: dict[str, Any]) -> list[str]:
    rows = [[
        "Relay" if r["server"] == "relay" else "baseline", str(r["load_viewers"]),
        _f(r["via_p50_ms"], ".0f"), _f(r["direct_p50_ms"], ".0f"), _f(r["added_p50_ms"], ".0f"),
        _f(r["via_p95_ms"], ".0f"), _f(r["direct_p95_ms"], ".0f"), _f(r["added_p95_ms"], ".0f"),
    ] for r in results["latency"]]
    return _table(["server", "load viewers", "via server p50", "direct p50", "added p50",
                   "via server p95", "direct p95", "added p95"], rows)


def _recording(results: dict[str, Any]) -> list[str]:
    rows = []
    for r in results.get("recording", []):
        rows.append(["Relay" if r["server"] == "relay" else "baseline", r["size"], _f(r["cpu_off"], ".1f", 100),
                     _f(r["cpu_on"], ".1f", 100), _f(r["cpu_per_stream"], ".1f", 100),
                     f"{r['frames_written']}/{r['frames_sent']}", _f(r["bytes_written"], ".1f", 1e-6)])
    return _table(["server", "size", "CPU % without", "CPU % recording", "recording, % of a core",
                   "video frames in the file / published while on", "MB written"], rows)


def _steps(results: dict[str, Any]) -> list[str]:
    rows = []
    for sweep in results["sweeps"]:
        for s in sweep["steps"]:
            rows.append([
                sweep["server"], sweep["size"], str(s["viewers"]), _f(s["server_cpu"], ".1f", 100),
                _f(s["server_kernel"], ".1f", 100),
                _f(s["packets_per_s"], ".0f"), _f(s["bits_per_s"], ".2f", 1e-6), _f(s["fps"], ".1f"),
                _f(s["rtp_loss"], ".2f", 100), _f(s["probe_max_gap_ms"], ".0f"),
                _f(s["rss_mb"], ".0f"), _f(s["load_cpu"], ".0f", 100),
                _f(s["loadgen_us_per_packet"], ".1f"), f"{s['srtp_authentic']}/{s['srtp_sampled']}",
                _f(s["server_core_busy"], ".0f", 100), _f(s["load_core_busy"], ".0f", 100),
                "yes" if s["ok"] else "**no**",
            ])
    return _table(["server", "size", "viewers", "server CPU %", "of which kernel %", "packets/s out",
                   "Mbps per load viewer", "probe fps", "probe loss %", "probe max frame gap ms", "RSS MB",
                   "load CPU %", "load gen µs/packet", "SRTP authentic/sampled", "server core busy %",
                   "load core busy %", "ok"], rows)


def _goals(results: dict[str, Any]) -> list[str]:
    relay_sweeps = [s for s in results["sweeps"] if s["server"] == "relay" and s["us_per_packet"] is not None]
    worst_us = max((s["us_per_packet"] for s in relay_sweeps), default=None)
    gop4 = [j for j in results["joins"] if j["server"] == "relay" and j["gop_s"] == 4 and j["p95_ms"] is not None]
    added = [r["added_p50_ms"] for r in results["latency"] if r["server"] == "relay" and r["added_p50_ms"] is not None]

    def verdict(value: float | None, goal: float) -> str:
        return "not measured" if value is None else ("met" if value <= goal else "**not met**")

    rows = [
        ["CPU-µs per packet per viewer", f"≤ {GOAL_US_PER_PACKET:g}", _f(worst_us),
         verdict(worst_us, GOAL_US_PER_PACKET)],
    ]
    for j in gop4:
        pli = "honours" if j["publisher_honors_pli"] else "ignores"
        rows.append([f"join p95 at GOP 4 s (publisher {pli} PLI)", f"≤ {GOAL_JOIN_P95_MS:g} ms",
                     _f(j["p95_ms"], ".0f"), verdict(j["p95_ms"], GOAL_JOIN_P95_MS)])
    worst_added = max(added, default=None)
    rows.append(["relay-added latency p50", f"≤ {GOAL_ADDED_LATENCY_MS:g} ms", _f(worst_added, ".0f"),
                 verdict(worst_added, GOAL_ADDED_LATENCY_MS)])
    return _table(["goal", "target", "Relay", ""], rows)


def markdown(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    lines = [
        (f"Run {m.get('date', '?')} on {m.get('nproc', '?')} × {m.get('cpu', '?')} "
         f"(Python {m.get('python', '?')}, Linux {m.get('kernel', '?')}); server on core {m.get('server_core')}, "
         f"load on core {m.get('load_core')}; load average at start {_f((m.get('loadavg') or [None])[0], '.2f')}; "
         f"{results.get('seconds', '?')} s. Command: `{results.get('command', 'python -m bench')}`"),
        "", "Goals", "", *_goals(results),
        "", "Forwarding cost and capacity (VP8 30 fps + Opus; fits over the passing windows)", "", *_cost(results),
        "", *_split(results),
        "", "Recording: server CPU for recording one stream (probe watching, no other viewer)", "",
        *_recording(results),
        "", "Join time: WHEP POST to first decoded frame (640x480)", "", *_joins(results),
        "", ("Latency: stamp latency at the measuring viewer, through the server and direct from the "
             "publisher at the same time (ms)"), "", *_latency(results),
        "", "Every window", "", *_steps(results),
    ]
    return "\n".join(lines) + "\n"
