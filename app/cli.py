"""The `cargohold` command: `serve` runs the daemon, `openapi` prints its API description; every
other command is the client (app/client/commands.py), which speaks to a daemon over its API."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .api.middleware import ListenerMark
from .client.entry import DAEMON_COMMANDS
from .config import DEFAULT_LISTEN, DEFAULT_ROOT, DEFAULT_STATE, Listener, Settings
from .main import create_app
from .ondisk import StartupError, secure_layout
from .serving import uvicorn_options

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
    serve.add_argument(
        "--token-file", type=Path,
        help="bearer token for TCP, at least 16 characters (default: generated <state>/token)",
    )
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve TCP listeners over TLS: certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="the TLS certificate's private key (PEM)")
    serve.add_argument(
        "--tls-client-ca", type=Path, metavar="FILE",
        help="require TCP clients to present a certificate signed by this CA (PEM), as Docker's --tlsverify",
    )
    serve.add_argument("--snapshotter", choices=["overlayfs", "native"], help="default: overlayfs where supported")
    serve.add_argument(
        "--import-max-size", type=int, default=8 * 1024**3, metavar="BYTES",
        help="largest tar import, counted on the body and once decompressed",
    )
    serve.add_argument(
        "--import-max-entries", type=int, default=1_000_000, metavar="N",
        help="entries one imported layer may make (members and the parent directories they imply)",
    )
    serve.add_argument(
        "--import-idle-timeout", type=float, default=60.0, metavar="SECONDS",
        help="an import whose upload sends nothing this long is refused and cleaned up",
    )
    serve.add_argument(
        "--import-concurrency", type=int, default=4, metavar="N", help="imports extracted at once (threads)"
    )
    serve.add_argument(
        "--insecure-registry", action="append", default=[], metavar="HOST:PORT",
        help="a registry spoken to over plain HTTP (no TLS); repeatable",
    )
    serve.add_argument(
        "--registry-ca", type=Path, metavar="DIR",
        help="a directory of CA certificates (*.crt, *.pem) trusted for registries, beside the system's",
    )
    serve.add_argument(
        "--log-max-size", type=int, default=16 * 1024 * 1024, metavar="BYTES",
        help="a task's log is truncated by conmon when it reaches this size",
    )
    serve.add_argument(
        "--allow-bind", action="append", type=Path, default=[], metavar="DIR",
        help="a host directory container specs may bind-mount from; repeatable (default: none)",
    )
    serve.add_argument(
        "--allow-privileged", action="store_true",
        help="lift the spec policy for every namespace (hooks, host namespaces, devices, capabilities ...)",
    )
    serve.add_argument(
        "--seccomp-profile", type=Path, metavar="FILE",
        help="default seccomp profile in Docker's format (default: /usr/share/containers/seccomp.json)",
    )
    serve.add_argument("--default-subnet", default=Settings.default_subnet, metavar="CIDR",
                       help="the default network's subnet, when it is first made (default %(default)s)")
    serve.add_argument("--cni-path", type=Path, action="append", metavar="DIR",
                       help="a directory of CNI plugins; repeatable (default: /usr/lib/cni)")
    _limit_flags(serve)
    serve.add_argument("--monitor-interval", type=float, default=1.0, metavar="SECONDS",
                       help="how often the monitor reads every task's cgroup")
    serve.add_argument("--metrics-public", action="store_true", help="serve /metrics over TCP without a token")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    commands.add_parser("openapi", help="print the OpenAPI description as JSON")
    return parser


# The bounds of README's "Limits": flag, Settings field, help.
_LIMITS: tuple[tuple[str, str, type, str], ...] = (
    ("--header-timeout", "header_timeout", float, "seconds a request may take to send its headers (408 after)"),
    ("--max-header-size", "max_header_bytes", int, "largest request head in bytes (431 above)"),
    ("--max-concurrency", "max_concurrency", int, "connections or requests in flight before a 503"),
    ("--list-max-size", "list_max_bytes", int, "bytes of objects in one list page before it ends early"),
    ("--event-max-size", "event_max_payload_bytes", int, "largest stored event payload in bytes"),
    ("--event-retention", "event_retention", int, "events kept in the store"),
    ("--event-retention-size", "event_retention_bytes", int, "payload bytes of the events kept in the store"),
    ("--log-line-max-size", "log_line_max_bytes", int, "longest log line served; longer ones come in parts"),
    ("--max-streams-per-client", "max_streams_per_client", int, "event streams and log follows per client (429)"),
    ("--import-archive-max-members", "import_archive_max_members", int, "members of an image archive (413 above)"),
    ("--attach-client-buffer", "attach_client_buffer_bytes", int,
     "output bytes waiting for one attached client before the process's output waits for it"),
    ("--attach-stall-timeout", "attach_stall_seconds", float,
     "seconds an attached client may leave its output unread with its buffer full before it is disconnected"),
    ("--attach-max-message-size", "attach_max_message_bytes", int, "largest message an attached client may send"),
)


def _limit_flags(serve: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for flag, name, kind, help_text in _LIMITS:
        default = getattr(defaults, name)
        serve.add_argument(flag, dest=name, type=kind, default=default, help=f"{help_text} (default {default})")


def _limit_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for _, name, _, _ in _LIMITS}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] not in DAEMON_COMMANDS:
        # `python -m app ps` as well: the console script goes through app/client/entry.py first.
        from .client.commands import run_app

        return run_app(arguments)
    args = _parser().parse_args(arguments)
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
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        snapshotter=args.snapshotter,
        import_max_bytes=args.import_max_size,
        import_max_entries=args.import_max_entries,
        import_idle_timeout=args.import_idle_timeout,
        import_concurrency=args.import_concurrency,
        log_max_bytes=args.log_max_size,
        insecure_registries=tuple(args.insecure_registry),
        registry_ca_dir=args.registry_ca,
        monitor_interval=args.monitor_interval,
        **_limit_settings(args),
        allowed_bind_roots=tuple(path.resolve() for path in args.allow_bind),
        allow_privileged=args.allow_privileged,
        seccomp_profile=args.seccomp_profile,
        default_subnet=args.default_subnet,
        cni_path=tuple(args.cni_path or Settings.cni_path),
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _check_tls(settings)
        return asyncio.run(serve(settings, args.log_level))
    except StartupError as error:
        print(f"cargohold: {error}", file=sys.stderr)
        return 1


def _check_tls(settings: Settings) -> None:
    """Refuse TLS flags that cannot work, before anything is bound; warn of a TCP listener
    that would carry the token in clear beyond this host."""
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if (cert is None) != (key is None):
        raise StartupError("--tls-cert and --tls-key go together: give both, or neither")
    if client_ca is not None and cert is None:
        raise StartupError("--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked over TLS")
    if cert is not None and key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cert, key)
            if client_ca is not None:
                context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as error:
            raise StartupError(f"cannot load --tls-cert, --tls-key or --tls-client-ca: {error}") from error
        if not settings.has_tcp_listener:
            log.warning("--tls-cert is given but no tcp:// listener: unix sockets are served without TLS")
        return
    for listener in settings.listeners:
        if listener.host is not None and not _is_loopback(listener.host):
            log.warning(
                "%s is served without TLS: the bearer token crosses the network in clear; "
                "give --tls-cert and --tls-key (and --tls-client-ca)", listener.url,
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: where it resolves, it may not be loopback


async def serve(settings: Settings, log_level: str = "info") -> int:
    """Serve on every listener until SIGTERM/SIGINT; in-flight requests finish first.

    Each listener gets a uvicorn `Server` of its own: its requests are marked with how it
    was bound (`ListenerMark`, read by `came_over_unix`), and only TCP ones get TLS. The
    app's lifespan (the daemon) runs once, around them all; the servers share one count
    of connections, so --max-concurrency bounds them together. Raises StartupError."""
    secure_layout(settings)  # before a socket is made in the state dir
    sockets: list[socket.socket] = []
    servers: list[_Server] = []
    stopping = asyncio.Event()

    def stop(number: int) -> None:
        stopping.set()
        for server in servers:
            server.handle_exit(number, None)

    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop, number)
    try:
        for listener in settings.listeners:
            sockets.append(_bind(listener))
        app = create_app(settings)
        async with app.router.lifespan_context(app) as state:
            for listener in settings.listeners:
                served = ListenerMark(_WithState(app, state or {}), "tcp" if listener.is_tcp else "unix")
                servers.append(_Server(_config(served, listener, settings, log_level), app))
            for server in servers[1:]:
                server.server_state = servers[0].server_state
            if stopping.is_set():  # a signal came while the daemon was starting
                return 0
            for listener in settings.listeners:
                tls = " (TLS)" if listener.is_tcp and settings.tls_cert is not None else ""
                log.info("listening on %s%s", listener.url, tls)
            async with asyncio.TaskGroup() as group:
                for server, sock, listener in zip(servers, sockets, settings.listeners, strict=True):
                    group.create_task(server.serve(sockets=[sock]), name=f"uvicorn {listener.url}")
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)
        for sock, listener in zip(sockets, settings.listeners, strict=False):  # those bound
            sock.close()
            if listener.path is not None:
                with suppress(FileNotFoundError):
                    listener.path.unlink()
    return 0 if all(server.started for server in servers) else 1


def _config(app: ASGIApp, listener: Listener, settings: Settings, log_level: str) -> uvicorn.Config:
    # httptools: the C parser costs a fraction of h11's per request. (uvloop was tried:
    # task creates hung under it, in the conmon launch, so the loop stays asyncio's.)
    # uvicorn_options: httptools with the header timeout and concurrency cap (app/serving.py).
    # proxy_headers off: no proxy stands in front of the daemon, so X-Forwarded-For from a
    # local client must not change the address its per-client bounds count against.
    options: dict[str, Any] = {
        "log_level": log_level, "timeout_graceful_shutdown": 10, "lifespan": "off", "proxy_headers": False,
        **uvicorn_options(settings),
    }
    if listener.is_tcp and settings.tls_cert is not None:
        options.update(ssl_certfile=str(settings.tls_cert), ssl_keyfile=str(settings.tls_key))
        if settings.tls_client_ca is not None:
            # As Docker's --tlsverify: no client certificate signed by this CA, no handshake.
            options.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return uvicorn.Config(app, **options)


class _WithState:
    """Hands the lifespan's state to each request (`request.state.daemon`), as uvicorn does
    when it runs the lifespan itself; here it runs once for all the listeners' servers."""

    def __init__(self, app: ASGIApp, state: Mapping[str, Any]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["state"] = dict(self.state)
        await self.app(scope, receive, send)


class _Server(uvicorn.Server):
    """uvicorn, minus catching SIGTERM/SIGINT itself (`serve` does, for all servers, and
    never re-raises them, which would kill the process before our cleanup and make a
    clean stop exit with 143), plus telling the app at once that it is stopping, so
    long-polls end instead of holding it, and a main loop that ticks once a second
    instead of ten times.

    uvicorn has no setting for any of these (it takes signals whenever it runs in the main
    thread, and its tick is fixed), so its internals are overridden: `main_loop`,
    `capture_signals`, `handle_exit`, and `on_tick` called. tests/unit/
    test_uvicorn_overrides.py fails the day uvicorn changes under them."""

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
        yield  # `serve` takes SIGINT/SIGTERM once, for every listener's server


def _bind(listener: Listener) -> socket.socket:
    if listener.path is not None:
        return _bind_unix(listener.path)
    assert listener.host is not None and listener.port is not None
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.create_server((listener.host, listener.port), family=family, backlog=2048)
    # asyncio sets TCP_NODELAY only on sockets made with proto IPPROTO_TCP, and create_server
    # makes them with 0: Nagle then delays keep-alive requests (bench/README.md). Accepted
    # sockets inherit it (Linux).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _bind_unix(path: Path) -> socket.socket:
    """Bind a unix socket at `path`, replacing only a stale socket: one nobody answers on.
    Anything else there (a file, a directory, a link, a live daemon's socket) is left
    alone and the daemon refuses to start (StartupError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else (
                "a symbolic link" if stat.S_ISLNK(info.st_mode) else "a file that is not a socket")
            raise StartupError(
                f"--listen unix://{path}: {path} is {kind}; cargohold replaces only a stale socket there: "
                "move it away or listen elsewhere"
            )
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # stale: left by a daemon that did not shut down cleanly
        except OSError as error:
            raise StartupError(f"--listen unix://{path}: cannot tell whether a daemon serves there: {error}") from error
        else:
            raise StartupError(f"--listen unix://{path}: another daemon is serving on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    # 0660 as Docker's socket: whoever can write to it can run processes as root.
    os.chmod(path, 0o660)
    sock.listen(2048)
    return sock
