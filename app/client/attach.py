"""Attach to a task's (or exec process's) streams over the daemon's WebSocket, speaking
Kubernetes' `v5.channel.k8s.io` (DESIGN "Terminals and attach"): stdout and stderr
copied to ours, our stdin sent on channel 0 and closed with the v5 close frame at EOF,
and, with a terminal, ours put in raw mode and its size sent on channel 4 at start and
on every SIGWINCH. The session ends with the process: its status (channel 3) gives the
exit code.

websockets' synchronous client: one thread copies stdin while the caller's thread reads;
its `send` is safe from both.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect, unix_connect

from .api import Client, ClientError

V5 = "v5.channel.k8s.io"
STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
OPEN_SECONDS = 10.0


@contextmanager
def open_attach(client: Client, container_id: str, exec_id: str | None, stdin: bool) -> Iterator[ClientConnection]:
    """The attach WebSocket, open; a refusal raises ClientError with the problem's detail."""
    path = f"/tasks/{container_id}" + (f"/processes/{exec_id}" if exec_id else "")
    path += f"/attach?stdin={'true' if stdin else 'false'}"
    headers = dict(client.headers)
    options: dict[str, Any] = {"subprotocols": [V5], "additional_headers": headers, "max_size": None,
                               "open_timeout": OPEN_SECONDS, "compression": None}
    endpoint = client.endpoint
    try:
        if endpoint.socket is not None:
            ws = unix_connect(str(endpoint.socket), uri=f"ws://cargohold{path}", **options)
        else:
            if client.ssl_context is not None:
                options["ssl"] = client.ssl_context
            ws = connect(f"{endpoint.ws_base_url}{path}", **options)
    except InvalidStatus as error:
        raise ClientError(_refusal(error), error.response.status_code) from None
    except (OSError, WebSocketException, TimeoutError) as error:
        raise ClientError(client.tls_refusal(error) or f"cannot attach through {endpoint.url}: {error}") from None
    with ws:
        yield ws


def _refusal(error: InvalidStatus) -> str:
    body = error.response.body or b""
    with suppress(ValueError, AttributeError):
        detail = json.loads(body).get("detail")
        if detail:
            return f"{' '.join(str(detail).split())} ({error.response.status_code})"
    return f"attach refused ({error.response.status_code})"


def relay(ws: ClientConnection, stdin: bool, terminal: bool,
          on_interrupt: Callable[[], None] | None = None) -> int | None:
    """Copy the streams until the process ends; its exit status, or None if the daemon did
    not say (the caller then asks POST .../wait)."""
    status: bytes = b""
    with _raw_terminal(terminal and sys.stdin.isatty()), _resizes(ws, terminal), _interrupts(on_interrupt):
        if stdin:
            threading.Thread(target=_copy_stdin, args=(ws,), name="cargohold.stdin", daemon=True).start()
        out, err = sys.stdout.buffer, sys.stderr.buffer
        try:
            while True:
                message = ws.recv()
                if isinstance(message, str) or not message:
                    continue
                channel, data = message[0], message[1:]
                if channel == STDOUT:
                    out.write(data)
                    out.flush()
                elif channel == STDERR:
                    err.write(data)
                    err.flush()
                elif channel == STATUS:
                    status += data
        except ConnectionClosed:
            pass
    return exit_status(status)


def exit_status(status: bytes) -> int | None:
    """The exit code a status message (a metav1.Status) carries."""
    if not status:
        return None
    try:
        document = json.loads(status)
    except ValueError:
        return None
    if document.get("status") == "Success":
        return 0
    for cause in (document.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            with suppress(ValueError, TypeError):
                return int(cause.get("message"))
    message = document.get("message")
    if message:
        raise ClientError(" ".join(str(message).split()))
    return None


def _copy_stdin(ws: ClientConnection) -> None:
    with suppress(ConnectionClosed, OSError):
        while True:
            data = os.read(sys.stdin.fileno(), 65536)
            if not data:
                ws.send(bytes((CLOSE, STDIN)))  # EOF: the process's stdin is closed (v5)
                return
            ws.send(bytes((STDIN,)) + data)


def _send_size(ws: ClientConnection) -> None:
    # The terminal's own size, not shutil's (which prefers $COLUMNS and $LINES).
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return
    with suppress(ConnectionClosed):
        ws.send(bytes((RESIZE,)) + json.dumps({"Width": size.columns, "Height": size.lines}).encode())


@contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextmanager
def _resizes(ws: ClientConnection, terminal: bool) -> Iterator[None]:
    if not terminal or not sys.stdout.isatty():
        yield
        return
    _send_size(ws)

    def resized(number: int, frame: FrameType | None) -> None:
        # Sent from a thread of its own: the handler may run while this thread is in recv.
        threading.Thread(target=_send_size, args=(ws,), daemon=True).start()

    previous = signal.signal(signal.SIGWINCH, resized)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


@contextmanager
def _interrupts(on_interrupt: Callable[[], None] | None) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM call `on_interrupt` (stop the container, as docker
    does) while the session goes on until the process has ended; a second Ctrl-C leaves."""
    if on_interrupt is None:
        yield
        return
    seen = threading.Event()

    def interrupted(number: int, frame: FrameType | None) -> None:
        if seen.is_set():
            raise KeyboardInterrupt
        seen.set()
        threading.Thread(target=on_interrupt, daemon=True).start()

    previous = {number: signal.signal(number, interrupted) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)

