"""The results as the Markdown tables of docs/benchmarks.md."""

from __future__ import annotations

from typing import Any

from relay.client.testpattern import AUDIO_PTIME

from .measure import FPS

GOAL_US_PER_PACKET = 8.0
GOAL_VIEWERS_PER_CORE = 500
GOAL_JOIN_P95_MS = 300.0
GOAL_CROWD_P95_MS = 250.0
GOAL_ADDED_LATENCY_MS = 2.0
GOAL_FROZEN_SHARE = 0.02  # at 5 % loss
ORDER = ["relay", "janus", "janus-el1", "baseline"]
LABELS = {"relay": "Relay", "janus": "Janus", "janus-el1": "Janus, event_loops = 1",
          "baseline": "baseline (MediaRelay)"}


def label(server: str) -> str:
    return LABELS.get(server, server)


def servers(results: dict[str, Any]) -> list[str]:
    """The servers of this run, in table order."""
    seen = {s["server"] for s in results["sweeps"]} | {r["server"] for r in results.get("latency", [])}
    return [s for s in ORDER if s in seen] + sorted(seen - set(ORDER))


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


def split(results: dict[str, Any], server: str) -> tuple[float, float] | None:
    """(µs per packet, µs per frame) of one viewer of `server`, solved from two sizes.

    Every size sends the same frames (FPS video + one Opus frame per
    AUDIO_PTIME) but a different number of packets, so two sizes give two
    equations: cost per viewer-second = a * packets/s + b * frames/s.
    """
    sweeps = [s for s in results["sweeps"] if s["server"] == server and s["cpu_per_viewer"] and _pps(s)]
    if len(sweeps) < 2:
        return None
    (p1, c1), (p2, c2) = ((_pps(s), s["cpu_per_viewer"] * 1e6) for s in sweeps[:2])
    if p1 is None or p2 is None or p1 == p2:
        return None
    per_packet = (c2 - c1) / (p2 - p1)
    return per_packet, (c1 - per_packet * p1) / (FPS + 1 / AUDIO_PTIME)


def _by(rows: list[dict[str, Any]], server: str, **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if r["server"] == server and all(r.get(k) == v for k, v in match.items())), None)


def _cost(results: dict[str, Any]) -> list[str]:
    """The report rows: one column per server, then Relay / each other server (same run)."""
    names = servers(results)
    others = [n for n in names if n != "relay"]
    sweeps = {(s["server"], s["size"]): s for s in results["sweeps"]}
    rows: list[list[str]] = []

    def row(title: str, values: dict[str, float | None], spec: str, scale: float = 1.0, ratio: bool = True) -> None:
        relay = values.get("relay")
        rows.append([title, *(_f(values.get(n), spec, scale) for n in names),
                     *((_ratio(relay, values.get(n)) if ratio else "") for n in others)])

    metrics = [
        ("marginal CPU-µs per forwarded packet per viewer (with audio)", "us_per_packet", ".1f", 1),
        ("… of which in the kernel", "kernel_us_per_packet", ".1f", 1),
        ("CPU per viewer, % of a core", "cpu_per_viewer", ".2f", 100),
        ("server CPU at 0 viewers (fit intercept), % of a core", "idle_cpu", ".1f", 100),
        ("RSS per viewer, MB", "rss_mb_per_viewer", ".2f", 1),
        ("viewers per core, projected from the fit", "projected_viewers_per_core", ".0f", 1),
        ("viewers per core, measured (≥ 29 fps, < 1 % loss, no freeze)", "capacity", "d", 1),
    ]
    sizes = list(dict.fromkeys(s["size"] for s in results["sweeps"]))
    blank = [""] * (len(names) + len(others))
    for size in sizes:
        rows.append([f"**{size}**", *blank])
        for title, key, spec, scale in metrics:
            row(title, {n: (sweeps.get((n, size)) or {}).get(key) for n in names}, spec, scale)
        row("packets/s each viewer receives", {n: _pps(sweeps[(n, size)]) if (n, size) in sweeps else None
                                               for n in names}, ".0f", ratio=False)
        rows.append(["what stopped the ramp", *((sweeps.get((n, size)) or {}).get("capacity_limit", "–")
                                                for n in names), *([""] * len(others))])
    if len(sizes) >= 2:
        rows.append([f"**per viewer, solved from {sizes[0]} and {sizes[1]}**", *blank])
        splits = {n: split(results, n) for n in names}
        row("µs per packet", {n: v[0] if v else None for n, v in splits.items()}, ".1f")
        row("µs per frame (30 video + 50 Opus frames/s)", {n: v[1] if v else None for n, v in splits.items()}, ".1f")
    rows.append(["**480p live publisher**", *blank])
    for load in sorted({r["load_viewers"] for r in results.get("latency", [])}):
        for q in ("50", "95"):
            row(f"server-added latency p{q}, ms, {load} load viewers" if load else
                f"server-added latency p{q}, ms, idle",
                {n: (_by(results["latency"], n, load_viewers=load) or {}).get(f"added_p{q}_ms") for n in names},
                ".0f")
    for gop in sorted({j["gop_s"] for j in results.get("joins", [])}):
        for pli in (True, False):
            values = {n: (_by(results["joins"], n, gop_s=gop, publisher_honors_pli=pli) or {}).get("p95_ms")
                      for n in names}
            if any(v is not None for v in values.values()):
                row(f"join p95, ms, GOP {gop:g} s, publisher {'answers' if pli else 'ignores'} PLI", values, ".0f")
    for gop in sorted({c["gop_s"] for c in results.get("crowd", [])}):
        for pli in (True, False):
            values = {n: (_by(results["crowd"], n, gop_s=gop, publisher_honors_pli=pli) or {}).get("p95_ms")
                      for n in names}
            crowd = next((c["crowd"] for c in results["crowd"]), 0)
            if any(v is not None for v in values.values()):
                row(f"flash crowd ({crowd} at once) join p95, ms, GOP {gop:g} s, publisher "
                    f"{'answers' if pli else 'ignores'} PLI", values, ".0f")
                row("… from connected to keyframe, p95, ms",
                    {n: (_by(results["crowd"], n, gop_s=gop, publisher_honors_pli=pli) or {})
                     .get("after_connect_p95_ms") for n in names}, ".0f")
    return _table(["", *(label(n) for n in names), *(f"Relay / {label(n)}" for n in others)], rows)


def _split(results: dict[str, Any]) -> list[str]:
    """Relay's per-packet and per-frame parts in words."""
    sizes = list(dict.fromkeys(s["size"] for s in results["sweeps"] if s["server"] == "relay"))
    solved = split(results, "relay")
    if solved is None or len(sizes) < 2:
        return []
    per_packet, per_frame = solved
    c1 = next(s["cpu_per_viewer"] for s in results["sweeps"] if s["server"] == "relay" and s["size"] == sizes[0])
    audio = (per_packet + per_frame) / AUDIO_PTIME / (c1 * 1e6)
    return [
        (f"Relay per viewer, solved from the {sizes[0]} and {sizes[1]} fits: about "
         f"{per_packet:.0f} µs per packet plus {per_frame:.0f} µs per frame ({FPS + 1 / AUDIO_PTIME:.0f} "
         f"frames/s: {FPS} video, {1 / AUDIO_PTIME:.0f} Opus); Opus, one packet per frame, is {audio:.0%} of a "
         f"{sizes[0]} viewer's cost."),
    ]


def _joins(results: dict[str, Any]) -> list[str]:
    janus = {(j["gop_s"], j["publisher_honors_pli"]): j for j in results["joins"] if j["server"] == "janus"}
    rows = []
    for j in results["joins"]:
        ref = janus.get((j["gop_s"], j["publisher_honors_pli"])) if j["server"] == "relay" else None
        rows.append([
            label(j["server"]), f"{j['gop_s']:g} s",
            "yes" if j["publisher_honors_pli"] else "no", str(j["samples"]), str(len(j["failures"])),
            _f(j["p50_ms"], ".0f"), _f(j["p95_ms"], ".0f"), _f(j["max_ms"], ".0f"),
            _ratio(j["p95_ms"], ref["p95_ms"]) if ref else "",
        ])
    return _table(["server", "GOP", "publisher honours PLI", "joins", "failed", "p50 ms", "p95 ms", "max ms",
                   "p95 Relay / Janus"], rows)


def _crowd(results: dict[str, Any]) -> list[str]:
    rows = [[
        label(c["server"]), f"{c['gop_s']:g} s", "yes" if c["publisher_honors_pli"] else "no", str(c["crowd"]),
        str(c["samples"]), str(len(c["failures"])), _f(c["p50_ms"], ".0f"), _f(c["p95_ms"], ".0f"),
        _f(c["max_ms"], ".0f"), _f(c.get("after_connect_p50_ms"), ".0f"), _f(c.get("after_connect_p95_ms"), ".0f"),
    ] for c in results.get("crowd", [])]
    return _table(["server", "GOP", "publisher honours PLI", "viewers at once", "joins", "failed", "p50 ms",
                   "p95 ms", "max ms", "connected → keyframe p50 ms", "connected → keyframe p95 ms"], rows)


def _loss(results: dict[str, Any]) -> list[str]:
    rows = [[
        label(r["server"]), f"{r['loss']:.0%}", _f(r["fps"], ".1f"), str(r["freezes"]),
        f"{r['frozen_s']:.2f} ({r['frozen_s'] / r['seconds']:.1%})" if r["seconds"] else "–",
        str(r["frames_lost"]), _f(r["rtp_loss"], ".1f", 100), _f(r.get("load_loss"), ".1f", 100),
        _f(r["latency_p50_ms"], ".0f"), _f(r["latency_p95_ms"], ".0f"), _f(r["max_gap_ms"], ".0f"),
    ] for r in results.get("loss", [])]
    return _table(["server", "UDP loss per hop", "probe fps", "freezes", "frozen s (share of window)",
                   "frames lost", "probe RTP loss % (after NACKs)", "load viewers' sequence gaps % (no NACK)",
                   "latency p50 ms", "latency p95 ms", "longest frame gap ms"], rows)


def _latency(results: dict[str, Any]) -> list[str]:
    rows = [[
        label(r["server"]), str(r["load_viewers"]),
        _f(r["via_p50_ms"], ".0f"), _f(r["direct_p50_ms"], ".0f"), _f(r["added_p50_ms"], ".0f"),
        _f(r["via_p95_ms"], ".0f"), _f(r["direct_p95_ms"], ".0f"), _f(r["added_p95_ms"], ".0f"),
    ] for r in results["latency"]]
    return _table(["server", "load viewers", "via server p50", "direct p50", "added p50",
                   "via server p95", "direct p95", "added p95"], rows)


def _recording(results: dict[str, Any]) -> list[str]:
    rows = []
    for r in results.get("recording", []):
        rows.append([label(r["server"]), r["size"], _f(r["cpu_off"], ".1f", 100),
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
    """Issue 12's goals, Relay's figure in this run against each."""
    relay_sweeps = [s for s in results["sweeps"] if s["server"] == "relay"]
    rows: list[list[str]] = []

    def verdict(value: float | None, goal: float, at_least: bool = False) -> str:
        if value is None:
            return "not measured"
        return "met" if (value >= goal if at_least else value <= goal) else "**not met**"

    for s in relay_sweeps:
        us = s["us_per_packet"]
        rows.append([f"CPU-µs per packet per viewer, {s['size']}", f"≤ {GOAL_US_PER_PACKET:g}", _f(us),
                     verdict(us, GOAL_US_PER_PACKET)])
        for janus in ("janus", "janus-el1"):
            ref = _by(results["sweeps"], janus, size=s["size"])
            if ref and ref["us_per_packet"] is not None:
                rows.append([f"… below {label(janus)} at {s['size']}", f"< {ref['us_per_packet']:.1f}", _f(us),
                             verdict(us, ref["us_per_packet"] - 1e-9)])
    relay480 = _by(results["sweeps"], "relay", size="480p")
    if relay480:
        rows.append(["viewers per core at 480p, measured", f"≥ {GOAL_VIEWERS_PER_CORE}",
                     str(relay480["capacity"]), verdict(relay480["capacity"], GOAL_VIEWERS_PER_CORE, at_least=True)
                     + f" ({relay480['capacity_limit']})"])
    added = [r["added_p50_ms"] for r in results["latency"] if r["server"] == "relay" and r["added_p50_ms"] is not None]
    worst_added = max(added, default=None)
    rows.append(["relay-added latency p50", f"≤ {GOAL_ADDED_LATENCY_MS:g} ms", _f(worst_added, ".0f"),
                 verdict(worst_added, GOAL_ADDED_LATENCY_MS)])
    for j in results["joins"]:
        if j["server"] == "relay" and j["gop_s"] == 4:
            pli = "answers" if j["publisher_honors_pli"] else "ignores"
            rows.append([f"join p95 at GOP 4 s (publisher {pli} PLI)", f"≤ {GOAL_JOIN_P95_MS:g} ms",
                         _f(j["p95_ms"], ".0f"), verdict(j["p95_ms"], GOAL_JOIN_P95_MS)])
    for c in results.get("crowd", []):
        if c["server"] == "relay":
            pli = "answers" if c["publisher_honors_pli"] else "ignores"
            figure = f"{_f(c['p95_ms'], '.0f')} ({_f(c.get('after_connect_p95_ms'), '.0f')} after connecting)"
            rows.append([f"{c['crowd']} joining at once, p95 (GOP {c['gop_s']:g} s, publisher {pli} PLI)",
                         f"≤ {GOAL_CROWD_P95_MS:g} ms", figure,
                         verdict(c["p95_ms"], GOAL_CROWD_P95_MS)])
    for r in results.get("loss", []):
        if r["server"] == "relay" and r["loss"] >= 0.05 and r["seconds"]:
            share = r["frozen_s"] / r["seconds"]
            rows.append([f"frozen time at {r['loss']:.0%} loss per hop", f"≤ {GOAL_FROZEN_SHARE:.0%}",
                         f"{share:.1%}", verdict(share, GOAL_FROZEN_SHARE)])
        elif r["server"] == "relay" and 0 < r["loss"] <= 0.02:
            rows.append([f"freezes at {r['loss']:.0%} loss per hop", "0", str(r["freezes"]), verdict(r["freezes"], 0)])
    return _table(["goal (issue 12)", "target", "Relay", ""], rows)


def markdown(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    lines = [
        (f"Run {m.get('date', '?')} on {m.get('nproc', '?')} × {m.get('cpu', '?')} "
         f"(Python {m.get('python', '?')}, Linux {m.get('kernel', '?')}); server on core {m.get('server_core')}, "
         f"load on core {m.get('load_core')}; load average at start {_f((m.get('loadavg') or [None])[0], '.2f')}; "
         f"{results.get('seconds', '?')} s. Command: `{results.get('command', 'python -m bench')}`"),
        "", "Goals", "", *_goals(results),
        "", ("Forwarding cost and capacity (VP8 30 fps + Opus; fits over the passing windows), latency and joins; "
             "ratios are Relay / the other server in this run"), "", *_cost(results),
        "", *_split(results),
        "", "Recording: server CPU for recording one stream (probe watching, no other viewer)", "",
        *_recording(results),
        "", "Join time: WHEP POST to first decoded frame (640x480), one viewer at a time", "", *_joins(results),
        "", "Flash crowd: viewers joining at once, WHEP POST to first whole keyframe received", "", *_crowd(results),
        "", ("Latency: stamp latency at the measuring viewer, through the server and direct from the "
             "publisher at the same time (ms)"), "", *_latency(results),
        "", ("Under loss: iptables drops this share of every UDP datagram in the namespace (publisher → server "
             "and server → viewer both lose it); the probe decodes 480p live"), "", *_loss(results),
        "", "Every window", "", *_steps(results),
    ]
    return "\n".join(lines) + "\n"
