"""conmon's attach socket and control fifo, as Podman drives them.

The attach socket (`attach`, in conmon's bundle dir) is SOCK_SEQPACKET. conmon sends
each read of the process's output as one packet whose first byte is the pipe it came
from (2 stdout, 3 stderr; a terminal's output is stdout) and writes each packet it
receives, as it is, to the process's stdin; a client's shutdown of its write side (or
its close) closes the process's stdin unless conmon runs with `--leave-stdin-open`.
conmon blocks writing to a client that does not read: whoever holds this socket must
read it all the time (the hub does).

A socket path is at most 107 bytes and task dirs are deeper than that can promise, so
the dir is opened and the socket reached through `/proc/self/fd/<dir fd>/attach`, as
Podman and conmon itself do. The control fifo (`ctl`) takes lines `<type> <a> <b>`;
type 1 resizes the terminal to `<height> <width>` (conmon refuses sizes over 1000).
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from ..errors import CargoholdError, ErrorKind

STDOUT_PIPE = 2
STDERR_PIPE = 3
# conmon reads at most CONN_SOCK_BUF_SIZE (32 KiB) of a packet: stdin goes in pieces no larger.
STDIN_PACKET_BYTES = 32 * 1024
# conmon sends a read of up to STDIO_BUF_SIZE (8 KiB) plus its pipe byte; room to spare.
OUTPUT_PACKET_BYTES = 64 * 1024 + 1
# conmon's bound on either side of a terminal (ctrl.c).
MAX_TERMINAL_SIDE = 1000
_WINDOW_RESIZE = 1


class AttachSocket:
    """A connection to one conmon's attach socket; `close` it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, attach_dir: Path) -> AttachSocket:
        """Connect to `attach_dir/attach`. Raises CONFLICT when conmon is not there (the
        process has exited, or never had an attach socket)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            dir_fd = os.open(attach_dir, os.O_PATH | os.O_CLOEXEC)
            try:
                await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{dir_fd}/attach")
            finally:
                os.close(dir_fd)
        except OSError as error:
            sock.close()
            raise CargoholdError(
                ErrorKind.CONFLICT, f"the process has no attach socket (it has exited?): {error.strerror}"
            ) from None
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def read(self) -> tuple[int, bytes] | None:
        """The next packet as (pipe, data); None once conmon has closed (the process ended)."""
        while True:
            try:
                packet = await self._loop.sock_recv(self._sock, OUTPUT_PACKET_BYTES)
            except OSError:
                return None
            if not packet:
                return None
            if len(packet) > 1:
                return packet[0], packet[1:]

    async def write(self, data: bytes) -> None:
        """Send `data` to the process's stdin (waits while conmon's buffer is full).
        Raises CONFLICT when stdin is closed."""
        try:
            for start in range(0, len(data), STDIN_PACKET_BYTES):
                await self._loop.sock_sendall(self._sock, data[start:start + STDIN_PACKET_BYTES])
        except OSError as error:
            raise CargoholdError(ErrorKind.CONFLICT, f"stdin is closed: {error.strerror}") from None

    def close_stdin(self) -> None:
        """conmon closes the process's stdin (EOF to it) when our write side shuts."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # conmon is gone already

    def close(self) -> None:
        self._sock.close()


def resize(ctl_fifo: Path, width: int, height: int) -> None:
    """Ask conmon to resize the process's terminal. Raises CONFLICT when conmon is gone."""
    try:
        # Non-blocking: conmon holds the fifo's read end for as long as it runs; without a
        # reader, open fails (ENXIO) at once instead of waiting for one.
        fd = os.open(ctl_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise CargoholdError(ErrorKind.CONFLICT, f"the process's conmon is gone: {error.strerror}") from None
    try:
        os.write(fd, f"{_WINDOW_RESIZE} {height} {width}\n".encode())
    except OSError as error:
        raise CargoholdError(ErrorKind.CONFLICT, f"the resize did not reach conmon: {error.strerror}") from None
    finally:
        os.close(fd)
