"""`relay bot`: run media bots on a stream of any WHEP server, publishing to any WHIP server.

Several bots given together share one WHEP session and one decoder. Bot
figures go to stderr as a status line; with `--stats-json` also to stdout, one
JSON line a second: that is how `relay serve --bot` hears how its bots do.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from relay.cli.console import StatusLine, UsageError, add_client_options, client_options, run
from relay.client.bot import BotHost, BotStats, load_bot, stats_json


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "bot", help="run media bots (Python) on a stream: derived streams, events to viewers",
        description="Watch the --input WHEP stream as decoded frames with each bot (MODULE:OBJECT, or "
        "path/file.py:OBJECT: a relay.client.bot.Bot or a video function) until the stream ends or "
        "Ctrl-C; what a bot returns is published to its --output WHIP URL.",
    )
    p.add_argument("bots", nargs="+", metavar="MODULE:OBJECT", help="the bots (they share one decoder)")
    p.add_argument("--input", required=True, metavar="URL", help="WHEP endpoint of the input stream")
    p.add_argument("--output", action="append", default=[], metavar="URL",
                   help="WHIP endpoint the i-th bot publishes to, '-' for none (repeatable; default: the "
                   "name given to bot.publish(), next to the input on a Relay server)")
    p.add_argument("--no-events", action="store_true",
                   help="do not post bot.say() messages (the server has no data API)")
    p.add_argument("--wait", action="store_true", help="wait for the input stream to go live (409: retry)")
    p.add_argument("--stats-json", action="store_true", help="print the bots' figures as a JSON line every second")
    add_client_options(p)
    p.set_defaults(func=lambda args: run(run_bots, args))


def status(stats: list[BotStats]) -> str:
    return "   ".join(
        f"{s.name} {s.state} {s.fps:5.1f} fps lag {s.lag_ms if s.lag_ms is not None else '-':>5} ms "
        f"drops {s.drops} crashes {s.crashes}" for s in stats)


async def run_bots(args: argparse.Namespace, stop: asyncio.Event) -> int:
    try:
        bots = [load_bot(spec) for spec in args.bots]
    except (ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from None
    if len(args.output) > len(bots):
        raise UsageError(f"{len(args.output)} --output for {len(bots)} bots")
    line = StatusLine()

    def report(stats: list[BotStats]) -> None:
        line.show(status(stats))
        if args.stats_json:
            print(stats_json(stats), flush=True)

    outputs: list[str | None] = [None if url == "-" else url for url in args.output]
    try:
        host = BotHost(bots, args.input, outputs, report, events=not args.no_events, **client_options(args))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    line.say(f"bots {', '.join(s.name for s in host.stats)} on {args.input}"
             + "".join(f"; {s.name} -> {s.output}" for s in host.stats if s.output))
    await host.run(stop, wait_live=args.wait)
    line.done()
    print(f"bots done: {status(host.stats)}", file=sys.stderr)
    return 0
