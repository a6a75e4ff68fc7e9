"""AttachService: the rules of attaching to a task's init or exec process.

A process can be attached to while it lives, and before it starts (a created task, or
an exec process added and not started, whose conmon the runtime then stages): attach,
then start, and nothing of the output is missed; stdin only if it was created with `stdin: true`,
a resize only if it has a terminal. The streams themselves are the hub's (`hub.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..errors import CargoholdError, ErrorKind
from ..runtime.conmon import Stdio
from ..runtime.tasks import TaskService
from .channels import Channel, checked_size
from .conmon import STDERR_PIPE, resize
from .hub import Attachments, Hub, Subscriber

# How long a session that saw its process end waits for the exit to be recorded.
EXIT_WAIT_SECONDS = 30


class AttachSession:
    """One client attached to one process."""

    def __init__(self, hub: Hub, subscriber: Subscriber, stdio: Stdio, stdin: bool, what: str) -> None:
        self._hub = hub
        self._subscriber = subscriber
        self.stdio = stdio
        self.stdin = stdin
        self._what = what
        self._stdin_closed = False

    async def output(self) -> tuple[Channel, bytes] | None:
        """The next output (stdout: a terminal's all), or None once the process has ended.
        Raises ClientTooSlowError."""
        packet = await self._subscriber.next()
        if packet is None:
            return None
        pipe, data = packet
        return (Channel.STDERR if pipe == STDERR_PIPE else Channel.STDOUT), data

    async def dropped(self) -> None:
        """Returns when this client is dropped for not reading (then raises ClientTooSlowError)."""
        await self._subscriber.dropped.wait()
        await self._subscriber.next()

    async def write_stdin(self, data: bytes) -> None:
        """Raises CONFLICT without stdin, or once it is closed."""
        if not self.stdin:
            raise CargoholdError(
                ErrorKind.CONFLICT,
                f"{self._what} was attached without stdin" if self.stdio.stdin else
                f"{self._what} has no stdin: create it with stdin: true",
            )
        if self._hub.stdin_closed or self._stdin_closed:
            raise CargoholdError(ErrorKind.CONFLICT, f"the stdin of {self._what} is closed")
        await self._hub.write(data)

    def close_stdin(self) -> None:
        """Without a terminal, EOF to the process (for every client: a process has one
        stdin). A terminal has no EOF but the one typed (^D) and stays open for others:
        only this client's input ends. Raises CONFLICT without stdin."""
        if not self.stdin:
            raise CargoholdError(ErrorKind.CONFLICT, f"{self._what} was attached without stdin: nothing to close")
        self._stdin_closed = True
        if not self.stdio.terminal:
            self._hub.close_stdin()

    def resize(self, width: int, height: int) -> None:
        if not self.stdio.terminal:
            raise CargoholdError(ErrorKind.CONFLICT, f"{self._what} has no terminal to resize")
        resize(self._hub.ctl_fifo, width, height)


class AttachService:
    def __init__(self, tasks: TaskService, attachments: Attachments) -> None:
        self._tasks = tasks
        self._attachments = attachments

    @asynccontextmanager
    async def session(
        self, namespace: str, task_id: str, exec_id: str = "", stdin: bool | None = None
    ) -> AsyncIterator[AttachSession]:
        """Attach to the task's init (exec id "") or an exec process; detach on exit (the
        process keeps running). `stdin` None: if the process has it. Raises NOT_FOUND,
        CONFLICT (exited, no stdin when `stdin` is True) before yielding."""
        what = _what(task_id, exec_id)
        files, stdio = await self._tasks.attachable(namespace, task_id, exec_id)
        if stdin and not stdio.stdin:
            raise CargoholdError(ErrorKind.CONFLICT, f"{what} has no stdin: create it with stdin: true")
        with_stdin = stdio.stdin if stdin is None else stdin
        async with self._attachments.attach((namespace, task_id, exec_id), files.attach_dir, files.ctl_fifo) as (
            hub, subscriber,
        ):
            yield AttachSession(hub, subscriber, stdio, with_stdin, what)

    async def resize(self, namespace: str, task_id: str, exec_id: str, width: int, height: int) -> None:
        """Resize the process's terminal. Raises INVALID_ARGUMENT (a size out of range),
        NOT_FOUND, CONFLICT (exited, or no terminal)."""
        checked_size(width, height)
        files, stdio = await self._tasks.attachable(namespace, task_id, exec_id)
        if not stdio.terminal:
            raise CargoholdError(ErrorKind.CONFLICT, f"{_what(task_id, exec_id)} has no terminal to resize")
        resize(files.ctl_fifo, width, height)

    async def exit_status(self, namespace: str, task_id: str, exec_id: str) -> int | None:
        """The exit status of a process whose output has ended, once recorded; None if it
        is not within EXIT_WAIT_SECONDS (or the daemon is stopping)."""
        try:
            async with asyncio.timeout(EXIT_WAIT_SECONDS):
                return (await self._tasks.wait(namespace, task_id, exec_id or None)).exit_status
        except (TimeoutError, CargoholdError):
            return None


def _what(task_id: str, exec_id: str) -> str:
    return f'exec process "{exec_id}" of task "{task_id}"' if exec_id else f'task "{task_id}"'
