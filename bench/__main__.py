"""`python -m bench`: measure Relay, Janus and the MediaRelay baseline in one run.

    python -m bench --plot          # the full table and docs/bench-*.png (about 15 minutes)
    python -m bench --short         # the CI smoke run (about 2 minutes)
    python -m bench --from out.json --plot   # tables and charts again from a run's --json
    python -m bench profile         # py-spy profile of Relay's send path

It re-runs itself inside a private network namespace with only loopback
(`unshare -n`) unless it already is in one, so no media leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .measure import FULL, SERVERS, SHORT, SIZES, cores, run, run_loss
from .profile import profile
from .report import markdown

ISOLATED = "RELAY_BENCH_ISOLATED"
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def isolated() -> bool:
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def reexec_isolated() -> None:
    """Replace this process by itself inside `unshare -n` with loopback up."""
    if os.environ.get(ISOLATED):
        raise SystemExit("bench: unshare -n did not leave loopback as the only interface")
    if not shutil.which("unshare"):
        raise SystemExit("bench: needs unshare (util-linux) to run in a loopback-only namespace")
    flags = "-n" if os.geteuid() == 0 else "-rn"
    os.environ[ISOLATED] = "1"
    script = 'ip link set lo up && exec "$@"'
    os.execvp("unshare", ["unshare", flags, "--", "sh", "-c", script, "sh",
                          sys.executable, "-m", "bench", *sys.argv[1:]])


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    server_core, load_core = cores()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
        "kernel": platform.release(), "server_core": server_core, "load_core": load_core,
        "loadavg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("action", nargs="?", default="run", choices=["run", "profile", "loss"])
    parser.add_argument("--short", action="store_true", help="the CI smoke run: small counts, short windows")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--sizes", help=f"comma-separated subset of {','.join(SIZES)}")
    parser.add_argument("--servers", help=f"comma-separated subset of {','.join(SERVERS)}")
    parser.add_argument("--max-viewers", type=int, help="cap the Relay sweep")
    parser.add_argument("--viewers", type=int, default=16, help="profile: viewers while sampling")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="profile: sampling time; loss: seconds per loss level")
    parser.add_argument("--logs", type=Path, help="keep the child processes' logs here")
    parser.add_argument("--plot", nargs="?", const=DOCS, type=Path, metavar="DIR",
                        help=f"also draw the charts (matplotlib) into DIR (default {DOCS.relative_to(ROOT)})")
    parser.add_argument("--from", dest="source", type=Path, metavar="JSON",
                        help="no run: print the tables (and --plot) from a previous run's --json")
    args = parser.parse_args(argv)
    if args.source:
        return report(json.loads(args.source.read_text()), args.plot)
    if not isolated():
        reexec_isolated()

    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="relay-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    if args.action == "profile":
        print(asyncio.run(profile(args.viewers, args.seconds, log_dir, log)))
        return 0
    plan = SHORT if args.short else FULL
    if args.action == "loss":
        plan = dataclasses.replace(plan, servers=(args.servers or "relay").split(","), loss_seconds=args.seconds)
        return report(asyncio.run(run_loss(plan, log_dir, log)), None)
    if args.sizes:
        plan = dataclasses.replace(plan, sizes=args.sizes.split(","))
    if args.servers:
        plan = dataclasses.replace(plan, servers=args.servers.split(","))
    if args.max_viewers:
        plan = dataclasses.replace(plan, relay_counts=[n for n in plan.relay_counts if n <= args.max_viewers])
    log(f"logs in {log_dir}")
    started, host = time.monotonic(), machine()
    def save(partial: dict[str, Any]) -> None:  # an interrupted run keeps what it measured
        if args.json:
            args.json.write_text(json.dumps({**partial, "machine": host, "partial": True}, indent=1))

    results = asyncio.run(run(plan, log_dir, log, save))
    results["machine"] = host
    results["command"] = "python -m bench " + " ".join(sys.argv[1:])
    results["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return report(results, args.plot)


def report(results: dict[str, Any], plot_dir: Path | None) -> int:
    print(markdown(results))
    if plot_dir:
        from .plot import plot  # matplotlib only when asked for

        for path in plot(results, plot_dir):
            print(f"[bench] wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
