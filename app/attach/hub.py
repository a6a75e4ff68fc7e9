"""The fan-out of one process's output to every client attached to it.

One `Hub` per attached process holds the daemon's one connection to its conmon and a
pump that reads it (conmon writes each output to the log first, then to its attach
clients, blocking on one that does not read). Each client gets a `Subscriber`: a queue
bounded in bytes. When a client's queue is full the pump waits for it, so a client that
reads slowly slows the process, as a terminal does (the log misses nothing); a client
that frees no room for `stall_seconds` is dropped (`ClientTooSlowError`) and the process,
the other clients and the log carry on. The daemon's memory stays bounded either way.
The last client to go closes the hub, which for a process with stdin but no terminal
closes its stdin (conmon's, Docker's and Kubernetes' "stdin once"); a terminal's stdin
stays open (`conmon --leave-stdin-open`).

`Attachments` owns the hubs and their pumps (named `attach.pump`), cancelled and awaited
by `close`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from .conmon import AttachSocket

log = logging.getLogger(__name__)

HubKey = tuple[str, str, str]  # namespace, task id, exec id ("" for the init)


class ClientTooSlowError(Exception):
    """The client's queue of output passed its bound: it is dropped."""


class Subscriber:
    """One client's share of a process's output: (pipe, data) in order, at most
    `max_bytes` of data waiting (one packet more, when the queue is empty)."""

    def __init__(self, max_bytes: int, stall_seconds: float) -> None:
        self._max_bytes = max_bytes
        self._stall_seconds = stall_seconds
        self._queue: deque[tuple[int, bytes]] = deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._ended = False
        self._left = False
        self.overflowed = False
        # Set when dropped: a sender stuck writing to this client is to be given up on.
        self.dropped = asyncio.Event()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    async def put(self, pipe: int, data: bytes) -> bool:
        """Queue `data`, waiting while the queue is full; False (the subscriber is dropped)
        when the client frees no room for `stall_seconds`."""
        while self._queue and self._queued_bytes + len(data) > self._max_bytes:
            if self.overflowed or self._left:
                return False
            self._room.clear()
            try:
                async with asyncio.timeout(self._stall_seconds):
                    await self._room.wait()
            except TimeoutError:
                self._drop()
                return False
        if self.overflowed or self._left:
            return False
        self._queue.append((pipe, data))
        self._queued_bytes += len(data)
        self._wakeup.set()
        return True

    def _drop(self) -> None:
        self.overflowed = True
        self.dropped.set()
        self._queue.clear()
        self._queued_bytes = 0
        self._wakeup.set()

    def leave(self) -> None:
        """The client has gone: a pump waiting for room in its queue stops waiting."""
        self._left = True
        self._room.set()

    def end(self) -> None:
        """No more output: the process's conmon has closed the socket."""
        self._ended = True
        self._wakeup.set()

    async def next(self) -> tuple[int, bytes] | None:
        """The next (pipe, data), or None once the output has ended. Raises ClientTooSlowError."""
        while True:
            if self.overflowed:
                raise ClientTooSlowError(
                    f"{self._max_bytes} bytes of output waited for this client for {self._stall_seconds} s"
                )
            if self._queue:
                pipe, data = self._queue.popleft()
                self._queued_bytes -= len(data)
                self._room.set()
                return pipe, data
            if self._ended:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()


class Hub:
    """One process's conmon connection and its subscribers."""

    def __init__(self, key: HubKey, sock: AttachSocket, ctl_fifo: Path) -> None:
        self.key = key
        self._sock = sock
        self.ctl_fifo = ctl_fifo
        self._subscribers: set[Subscriber] = set()
        self._stdin_lock = asyncio.Lock()
        self.stdin_closed = False
        self.ended = asyncio.Event()
        self._pump: asyncio.Task[None]

    def subscribe(self, max_bytes: int, stall_seconds: float) -> Subscriber:
        subscriber = Subscriber(max_bytes, stall_seconds)
        if self.ended.is_set():
            subscriber.end()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> bool:
        """Forget `subscriber`; True when none is left."""
        subscriber.leave()
        self._subscribers.discard(subscriber)
        return not self._subscribers

    def start(self, pumps: set[asyncio.Task[None]]) -> None:
        """Start the pump (kept in `pumps` while it runs)."""
        self._pump = asyncio.create_task(self._run(), name="attach.pump")
        pumps.add(self._pump)
        self._pump.add_done_callback(pumps.discard)

    async def _run(self) -> None:
        """Read conmon's output until it closes, handing each packet to every subscriber.
        The socket is closed here, once nothing waits on it any more."""
        try:
            while (packet := await self._sock.read()) is not None:
                pipe, data = packet
                for subscriber in list(self._subscribers):
                    if not await subscriber.put(pipe, data):
                        self._subscribers.discard(subscriber)
        except Exception:
            log.exception("attach to %s stopped reading conmon", "/".join(self.key))
        finally:
            self._sock.close()
            self.ended.set()
            for subscriber in self._subscribers:
                subscriber.end()

    async def write(self, data: bytes) -> None:
        """To the process's stdin, one client's data whole (never interleaved with
        another's). Raises CONFLICT once stdin is closed."""
        async with self._stdin_lock:
            await self._sock.write(data)

    def close_stdin(self) -> None:
        self.stdin_closed = True
        self._sock.close_stdin()

    def close(self) -> None:
        """Stop the pump, which closes the connection (conmon then closes the stdin of a
        process without a terminal)."""
        self._pump.cancel()


class Attachments:
    """The hubs of the processes clients are attached to, by (namespace, task, exec id)."""

    def __init__(self, client_buffer_bytes: int, stall_seconds: float) -> None:
        self._client_buffer_bytes = client_buffer_bytes
        self._stall_seconds = stall_seconds
        self._hubs: dict[HubKey, Hub] = {}
        self._pumps: set[asyncio.Task[None]] = set()
        self._connecting = asyncio.Lock()

    @asynccontextmanager
    async def attach(self, key: HubKey, attach_dir: Path, ctl_fifo: Path) -> AsyncIterator[tuple[Hub, Subscriber]]:
        """Join the process's hub (connecting to conmon if none is open); leave it on exit,
        closing it when this was its last client. Raises CONFLICT (no conmon there)."""
        async with self._connecting:  # one hub per process, even for clients arriving at once
            hub = self._hubs.get(key)
            if hub is None or hub.ended.is_set():
                hub = Hub(key, await AttachSocket.connect(attach_dir), ctl_fifo)
                self._hubs[key] = hub
                hub.start(self._pumps)
            subscriber = hub.subscribe(self._client_buffer_bytes, self._stall_seconds)
        try:
            yield hub, subscriber
        finally:
            if hub.unsubscribe(subscriber) and self._hubs.get(key) is hub:
                del self._hubs[key]
                hub.close()

    def attached(self) -> int:
        """Processes with at least one client (for tests and metrics)."""
        return len(self._hubs)

    async def close(self) -> None:
        """Close every hub and await its pump (the processes keep running)."""
        for hub in list(self._hubs.values()):
            hub.close()
        self._hubs.clear()
        pumps = list(self._pumps)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
