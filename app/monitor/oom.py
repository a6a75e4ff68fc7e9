"""OOM notification on cgroup v1: an eventfd registered on `memory.oom_control` through
`cgroup.event_control`, read by the event loop (`loop.add_reader`), so an OOM kill is
seen the moment the kernel signals it rather than at the next poll.

The kernel also signals the eventfd when the cgroup is removed; the listener is told
either way and checks the `oom_kill` counter itself. On cgroup v2 there is no eventfd:
the monitor compares `memory.events`' `oom_kill` counter at each poll instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path


class OomEventfd:
    """One task's OOM eventfd. `close()` releases it (the kernel drops its registration
    when the eventfd is closed or the cgroup goes)."""

    def __init__(self, memory_cgroup: Path, on_signal: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_signal = on_signal
        self._fd: int | None = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            control = os.open(memory_cgroup / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                # The kernel takes its own reference to both files: ours may be closed after.
                with open(memory_cgroup / "cgroup.event_control", "w") as event_control:
                    event_control.write(f"{self._fd} {control}")
            finally:
                os.close(control)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        if self._fd is None:
            return
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            return
        self._on_signal()

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
