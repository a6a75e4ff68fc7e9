"""The `cargohold` command: `serve` runs the daemon, `openapi` prints its API description."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from . import __version__
from .config import DEFAULT_LISTEN, DEFAULT_ROOT, DEFAULT_STATE, Listener, Settings
from .main import create_app

log = logging.getLogger("cargohold")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cargohold", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cargohold {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="persistent data (database, snapshots)")
    serve.add_argument("--state", type=Path, default=DEFAULT_STATE, help="runtime state (sockets, bundles, token)")
    serve.add_argument(
        "--listen", action="append", metavar="URL",
        help=f"unix:///path.sock or tcp://host:port; repeatable (default {DEFAULT_LISTEN})",
    )
    serve.add_argument("--token-file", type=Path, help="bearer token for TCP (default: generated <state>/token)")
    serve.add_argument("--snapshotter", choices=["overlayfs", "native"], help="default: overlayfs where supported")
    serve.add_argument("--import-max-size", type=int, default=8 * 1024**3, metavar="BYTES", help="largest tar import")
    serve.add_argument(
        "--log-max-size", type=int, default=16 * 1024 * 1024, metavar="BYTES",
        help="a task's log is truncated by conmon when it reaches this size",
    )
    serve.add_argument(
        "--allow-bind", action="append", type=Path, default=[], metavar="DIR",
        help="a host directory container specs may bind-mount from; repeatable (default: none)",
    )
    serve.add_argument("--monitor-interval", type=float, default=1.0, metavar="SECONDS",
                       help="how often the monitor reads every task's cgroup")
    serve.add_argument("--metrics-public", action="store_true", help="serve /metrics over TCP without a token")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    commands.add_parser("openapi", help="print the OpenAPI description as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "openapi":
        app = create_app(Settings(listeners=()))
        json.dump(app.openapi(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    try:
        listeners = tuple(Listener.parse(url) for url in (args.listen or [DEFAULT_LISTEN]))
    except ValueError as error:
        print(f"cargohold: {error}", file=sys.stderr)
        return 2
    settings = Settings(
        root=args.root,
        state=args.state,
        listeners=listeners,
        token_file=args.token_file,
        metrics_public=args.metrics_public,
        snapshotter=args.snapshotter,
        import_max_bytes=args.import_max_size,
        log_max_bytes=args.log_max_size,
        monitor_interval=args.monitor_interval,
        allowed_bind_roots=tuple(path.resolve() for path in args.allow_bind),
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(settings, args.log_level))


async def serve(settings: Settings, log_level: str = "info") -> int:
    """Serve on every listener until SIGTERM/SIGINT; in-flight requests finish first."""
    sockets = [_bind(listener) for listener in settings.listeners]
    app = create_app(settings)
    # httptools: the C parser costs a fraction of h11's per request. (uvloop was tried:
    # task creates hung under it, in the conmon launch, so the loop stays asyncio's.)
    config = uvicorn.Config(
        app, log_level=log_level, timeout_graceful_shutdown=10, lifespan="on", http="httptools"
    )
    server = _Server(config, app)
    try:
        for listener in settings.listeners:
            log.info("listening on %s", listener.url)
        await server.serve(sockets=sockets)
    finally:
        for sock, listener in zip(sockets, settings.listeners, strict=True):
            sock.close()
            if listener.path is not None:
                with suppress(FileNotFoundError):
                    listener.path.unlink()
    return 0 if server.started else 1


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the caught SIGTERM/SIGINT once it has shut down (which
    would kill the process before our cleanup and make a clean stop exit with 143), plus
    telling the app at once that it is stopping, so long-polls end instead of holding it,
    and a main loop that ticks once a second instead of ten times."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app
        self._exit_requested = asyncio.Event()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._exit_requested.set()
        stop_waiting = getattr(self._app.state, "stop_waiting", None)
        if stop_waiting is not None:
            stop_waiting()

    async def main_loop(self) -> None:
        # uvicorn wakes every 0.1 s to look for a stop; on an idle daemon those wakeups
        # were most of its CPU. A signal wakes this loop at once instead, and the tick,
        # which refreshes the Date header (whole seconds), comes once a second.
        while not await self.on_tick(0):  # counter 0: every tick is a once-a-second one
            with suppress(TimeoutError):
                await asyncio.wait_for(self._exit_requested.wait(), 1.0)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, self.handle_exit, number, None)
        try:
            yield
        finally:
            for number in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(number)


def _bind(listener: Listener) -> socket.socket:
    if listener.path is not None:
        return _bind_unix(listener.path)
    assert listener.host is not None and listener.port is not None
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    return socket.create_server((listener.host, listener.port), family=family, backlog=2048)


def _bind_unix(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: left by a daemon that did not shut down cleanly
        else:
            raise SystemExit(f"cargohold: another daemon is serving on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    # 0660 as Docker's socket: whoever can write to it can run processes as root.
    os.chmod(path, 0o660)
    sock.listen(2048)
    return sock
