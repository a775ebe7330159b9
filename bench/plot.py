"""`python -m bench --plot`: the run as two PNG charts for docs/benchmarks.md.

bench-cpu.png: server CPU against viewers, one panel per size, a line per
server (Relay, Janus with both threading settings, the MediaRelay baseline).
bench-joins.png: every join time of the run, one viewer at a time and flash
crowds, per server, GOP and publisher behaviour.
matplotlib is an optional extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import ORDER, label, servers

CPU_CHART = "bench-cpu.png"
JOIN_CHART = "bench-joins.png"
COLORS = {"relay": "tab:blue", "janus": "tab:orange", "janus-el1": "tab:red", "baseline": "tab:gray"}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench --plot needs matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def cpu_chart(results: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    sizes = list(dict.fromkeys(s["size"] for s in results["sweeps"]))
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for name in servers(results):
            sweep = next((s for s in results["sweeps"] if s["server"] == name and s["size"] == size), None)
            if not sweep:
                continue
            steps = sweep["steps"]
            ax.plot([s["viewers"] for s in steps], [100 * s["server_cpu"] for s in steps], marker="o",
                    markersize=3, color=COLORS.get(name), label=label(name))
            failed = [s for s in steps if not s["ok"]]
            ax.scatter([s["viewers"] for s in failed], [100 * s["server_cpu"] for s in failed], marker="x",
                       color=COLORS.get(name), s=40)
        ax.set_title(f"{size}: VP8 30 fps + Opus, one publisher")
        ax.set_xlabel("viewers")
        ax.set_ylabel("server CPU, % of one core")
        ax.set_ylim(0, 110)
        ax.axhline(100, color="black", linewidth=0.5)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Server CPU against viewers (x: a window that failed), {results.get('machine', {}).get('date', '')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def join_chart(results: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    groups: list[tuple[str, list[float]]] = []
    for key, title in (("joins", "one at a time"), ("crowd", "at once")):
        for row in sorted(results.get(key, []), key=lambda r: (ORDER.index(r["server"]) if r["server"] in ORDER
                                                              else 99, r["gop_s"], not r["publisher_honors_pli"])):
            if row.get("join_ms"):
                crowd = f" ×{row['crowd']}" if key == "crowd" else ""
                pli = "PLI" if row["publisher_honors_pli"] else "no PLI"
                groups.append((f"{label(row['server']).split(' (')[0]}\n{title}{crowd}\nGOP {row['gop_s']:g} s, {pli}",
                               row["join_ms"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups)), 5))
    if groups:
        ax.boxplot([g[1] for g in groups], whis=(5, 95), showfliers=True)
        ax.set_xticks(range(1, len(groups) + 1), [g[0] for g in groups], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("join time, ms (WHEP POST to first frame; log scale)")
    ax.set_title("Join-time distributions (box: quartiles, whiskers: p5–p95)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / CPU_CHART, directory / JOIN_CHART]
    cpu_chart(results, paths[0])
    join_chart(results, paths[1])
    return paths
