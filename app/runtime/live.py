"""One object per live task: its locks, its exit watches, the futures its waiters hold,
the pidfds of its exec processes, those staged for attach, and the cgroup it runs in.

A `LiveTask` exists while anything uses it (a lock held or waited for, a process
watched, a waiter's future unresolved, an adopted cgroup not yet removed) and goes with
its last use, so ids tried and gone leave nothing behind. Its status is the store's row:
one truth, not two. This module runs no process and writes no row.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..models import Exit
from .cgroups import daemon_cgroup_parent, remove_cgroup, task_cgroup
from .conmon import ExitWatch, StagedExec, Started, open_child_pidfd

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Lock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(eq=False)
class LiveTask:
    """Everything the daemon holds for one task; processes keyed by exec id ("": init)."""

    namespace: str
    id: str
    locks: dict[str, _Lock] = field(default_factory=dict)
    watches: dict[str, ExitWatch] = field(default_factory=dict)
    # Resolved once a watched process's exit is recorded.
    exited: dict[str, asyncio.Future[Exit]] = field(default_factory=dict)
    # Resolved once the task is deleted (exit means delete).
    deleted: asyncio.Future[Exit] | None = None
    # pidfds of the exec processes being watched: kill_exec signals through them only.
    pidfds: dict[str, int] = field(default_factory=dict)
    # Exec processes attached to before their start: conmon up, the process waiting.
    staged: dict[str, StagedExec] = field(default_factory=dict)
    # The cgroup its bundle names when an earlier version made it (before each daemon had
    # a parent of its own), until teardown removes it.
    adopted_cgroup: str | None = None

    def idle(self) -> bool:
        return not (self.locks or self.watches or self.exited or self.pidfds or self.staged) and (
            self.deleted is None and self.adopted_cgroup is None
        )


class LiveTasks:
    """The live tasks of one daemon, by (namespace, id), and where their cgroups are."""

    def __init__(self, state: Path) -> None:
        self._tasks: dict[tuple[str, str], LiveTask] = {}
        self.cgroup_parent = daemon_cgroup_parent(state)
        # Held while a task's cgroup parents may be created or removed (see Exits.teardown).
        self.cgroup_lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, namespace: str, task_id: str) -> LiveTask | None:
        return self._tasks.get((namespace, task_id))

    def entry(self, namespace: str, task_id: str) -> LiveTask:
        """The task's object, made on first use."""
        key = (namespace, task_id)
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = LiveTask(namespace, task_id)
        return task

    def release(self, task: LiveTask) -> None:
        """Drop the object when nothing uses it any more."""
        if task.idle() and self._tasks.get((task.namespace, task.id)) is task:
            del self._tasks[(task.namespace, task.id)]

    def all(self) -> list[LiveTask]:
        return list(self._tasks.values())

    @asynccontextmanager
    async def lock(self, namespace: str, task_id: str, exec_id: str = "") -> AsyncIterator[LiveTask]:
        """Hold the lock of a task (exec id "") or of one of its exec processes."""
        task = self.entry(namespace, task_id)
        entry = task.locks.setdefault(exec_id, _Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield task
        finally:
            entry.users -= 1
            if not entry.users:
                del task.locks[exec_id]
                self.release(task)

    # --- futures ------------------------------------------------------------------------

    def pending(self, namespace: str, task_id: str, exec_id: str) -> asyncio.Future[Exit] | None:
        """What a waiter awaits: a task's deletion (exec id ""), an exec process's exit."""
        task = self.get(namespace, task_id)
        if task is None:
            return None
        return (None if exec_id else task.deleted) or task.exited.get(exec_id)

    def resolve(self, task: LiveTask, exec_id: str, exit_: Exit) -> None:
        future = task.exited.pop(exec_id, None)
        if future is not None and not future.done():
            future.set_result(exit_)
        self.release(task)

    def resolve_deleted(self, task: LiveTask, exit_: Exit) -> None:
        deleted, task.deleted = task.deleted, None
        if deleted is not None and not deleted.done():
            deleted.set_result(exit_)
        self.release(task)

    # --- pidfds -------------------------------------------------------------------------

    def keep_pidfd(self, task: LiveTask, exec_id: str, started: Started) -> None:
        fd = open_child_pidfd(started.pid, started.conmon_pid)
        if fd is None:
            # Gone already (its exit is on its way) or not the process conmon supervises.
            log.info("no pidfd for exec %s/%s %s (pid %d): it cannot be signalled",
                     task.namespace, task.id, exec_id, started.pid)
            return
        task.pidfds[exec_id] = fd

    def signal_exec(self, namespace: str, task_id: str, exec_id: str, number: int) -> bool:
        """Whether the signal was sent (False: the process is gone or not known)."""
        task = self.get(namespace, task_id)
        fd = task.pidfds.get(exec_id) if task else None
        if fd is None:
            return False
        try:
            signal.pidfd_send_signal(fd, number)
        except ProcessLookupError:
            return False
        return True

    def cancel_staged(self, task: LiveTask, exec_id: str) -> None:
        """An exec process staged for attach that is not to run (its task is ending)."""
        staged = task.staged.pop(exec_id, None)
        if staged is not None:
            staged.cancel()

    def forget_pidfd(self, task: LiveTask, exec_id: str) -> None:
        fd = task.pidfds.pop(exec_id, None)
        if fd is not None:
            os.close(fd)

    # --- cgroups ------------------------------------------------------------------------

    def cgroup(self, namespace: str, task_id: str) -> str:
        task = self.get(namespace, task_id)
        adopted = task.adopted_cgroup if task else None
        return adopted or task_cgroup(self.cgroup_parent, namespace, task_id)

    async def remove_cgroup(self, namespace: str, task_id: str) -> None:
        """The task's cgroup, and its parents up to this daemon's while they are empty (an
        earlier version's layout: up to the namespace's). Every removal comes here, under
        the task's lock (a create of the same id makes the cgroup under it) and taking the
        cgroup lock (other tasks' creates make the parents). Raises RuntimeError, a bug and
        not a client's error, when the caller does not hold the task's lock."""
        task = self.get(namespace, task_id)
        held = task.locks.get("") if task else None
        if task is None or held is None or not held.lock.locked():
            raise RuntimeError(f"the cgroup of task {namespace}/{task_id} is removed outside the task's lock")
        adopted, task.adopted_cgroup = task.adopted_cgroup, None
        group, up_to = (adopted, posixpath.dirname(adopted)) if adopted else (
            task_cgroup(self.cgroup_parent, namespace, task_id), self.cgroup_parent
        )
        async with self.cgroup_lock:
            await asyncio.to_thread(remove_cgroup, group, up_to)

    def close(self) -> None:
        """Stop watching and close every pidfd (the tasks keep running); exec processes
        staged for attach are cancelled (a conmon left waiting would run one unwatched)."""
        for task in self.all():
            for exec_id in list(task.staged):
                self.cancel_staged(task, exec_id)
            for watch in task.watches.values():
                watch.close()
            task.watches.clear()
            for exec_id in list(task.pidfds):
                self.forget_pidfd(task, exec_id)
