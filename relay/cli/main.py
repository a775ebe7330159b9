"""`relay` command line."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.cli import bot, cert, probe, publish, watch
from relay.config import BotConfig, Config, ConfigError, load_config, validate


def serve(args: argparse.Namespace) -> int:
    from relay.server import workers
    from relay.server.app import create_app, tls_context
    from relay.server.auth import RedactingAccessLogger, is_loopback, publishing_open

    try:
        config = load_config(args.config)
        if args.host is not None:
            config.server.host = args.host
        if args.port is not None:
            config.server.port = args.port
        if args.record:
            config.recording.enabled = True
        if args.recordings_dir is not None:
            config.recording.dir = args.recordings_dir
        if args.tls_cert is not None:
            config.server.tls_cert = args.tls_cert
        if args.tls_key is not None:
            config.server.tls_key = args.tls_key
        for spec in args.bot:
            stream, _, bot = spec.partition("=")
            config.bots.append(BotConfig(stream, bot))
        if args.origin is not None:
            config.origin.url = args.origin
        if args.workers is not None:
            config.workers.count = args.workers
        validate(config)
        ssl_context = tls_context(config.server)
    except ConfigError as exc:
        print(f"relay: bad config: {exc}", file=sys.stderr)
        return 2
    scheme = "https" if ssl_context else "http"
    if args.worker is not None:
        return serve_worker(config, args.worker, args.run_dir)
    if publishing_open(config.auth) and not is_loopback(config.server.host):
        logging.getLogger("relay").warning(
            "anyone who can reach %s may publish any stream: set auth.publish_token "
            "(or per-stream tokens with auth.open_publish: false)", config.server.host)
    app = create_app(config)
    count = config.workers.count or (1 if ssl_context else os.cpu_count() or 1)  # see config.validate
    main_socket = workers.setup_main(app, config, count) if count > 1 else None
    app.on_shutdown.insert(0, exit_deadline(config.server.shutdown_grace))
    web.run_app(
        app,
        host=config.server.host,
        port=config.server.port,
ssl_context=ssl_context,
        path=main_socket,
        shutdown_timeout=config.server.shutdown_grace / 2,  # for requests in flight; the rest is for peers and files
        access_log_class=RedactingAccessLogger,
        print=lambda msg: print(f"relay: serving on {scheme}://{config.server.host}:{config.server.port}", flush=True),
    )
    return 0


def serve_worker(config: Config, index: int, run_dir: str) -> int:
    """A worker process (started by the main process, never by hand): an edge of the main process."""
    from relay.server import workers
    from relay.server.app import create_app
    from relay.server.auth import RedactingAccessLogger

    own, main_socket = workers.worker_sockets(run_dir, index)
    app = create_app(config, origin_socket=main_socket)
    workers.setup_worker(app, index)
    app.on_shutdown.insert(0, exit_deadline(config.server.shutdown_grace))
    web.run_app(app, path=own, shutdown_timeout=config.server.shutdown_grace / 2,
                access_log_class=RedactingAccessLogger, print=None)
    return 0


def exit_deadline(seconds: float) -> Callable[[web.Application], Awaitable[None]]:
    """A shutdown hook that ends the process `seconds` after SIGTERM/SIGINT, whatever still hangs.

    A timer thread, so a blocked event loop cannot stop it; recordings are
    flushed every second, so at worst the last second of a file is lost.
    """

    async def arm(app: web.Application) -> None:
        timer = threading.Timer(seconds, _exit_now, args=(seconds,))
        timer.daemon = True
        timer.start()

    return arm


def _exit_now(seconds: float) -> None:
    logging.getLogger("relay").error("shutdown took longer than %g s (server.shutdown_grace): exiting now", seconds)
    logging.shutdown()
    os._exit(1)


def hash_token(args: argparse.Namespace) -> int:
    from relay.names import hash_token as digest

    token = args.token or (getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline().strip())
    if not token:
        print("relay: no token given", file=sys.stderr)
        return 2
    print(digest(token))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="WebRTC broadcast relay (WHIP in, WHEP out)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("serve", help="run the server")
    p.add_argument("--config", help="YAML settings file (default: embedded defaults)")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port (overrides server.port)")
    p.add_argument("--record", action="store_true",
                   help="record every stream (sets recording.enabled; per-stream 'enabled: false' still wins)")
    p.add_argument("--recordings-dir", metavar="DIR", help="where recordings go (overrides recording.dir)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain (server.tls_cert)")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key (server.tls_key)")
    p.add_argument("--bot", action="append", default=[], metavar="STREAM=MODULE:OBJECT",
                   help="run a media bot on STREAM while it is live (repeatable; adds to bots: in the config)")
    p.add_argument("--origin", metavar="URL",
                   help="edge mode: pull streams not carried here from this WHEP origin (overrides origin.url)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes serving viewers (overrides workers.count; 1: one process; "
                        "0, the default: one per CPU)")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the main process for its workers
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.set_defaults(func=serve)
    h = commands.add_parser("hash-token", help="print the sha256: form of a token, for config.yaml")
    h.add_argument("token", nargs="?", help="the token (default: read it from the terminal or stdin)")
    h.set_defaults(func=hash_token)
    for client_command in (publish, watch, probe, cert, bot):
        client_command.add_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
