"""Exits and teardown: exit means delete.

When a watched conmon exits, the status it wrote is recorded (/tasks/exit; for an exec
process, /tasks/exec-exited is the store's); for the init process the task's exec
processes are collected too, then the task is torn down (runtime state, cgroup, rootfs
mount, task dir) and its row deleted (/tasks/delete). Waiters are answered through the
task's `LiveTask` futures, and never hang: a failed handling answers them UNAVAILABLE.
This module starts nothing; it only ends what ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import CargoholdError, ErrorKind
from ..models import Exit
from ..monitor.cgroup_stats import CgroupStats
from ..monitor.monitor import Monitor
from ..snapshots.mounts import unmount_and_remove
from ..store.tasks import TaskStore
from .bundle import runtime_id
from .conmon import ExitWatch, Started, read_exit_status
from .layout import TaskDirs, TaskLayout
from .live import LiveTasks
from .oci import OCIRuntime

log = logging.getLogger(__name__)

# Undoes, at a task's teardown, what a create step made outside the task dir: (namespace, task id).
TeardownHook = Callable[[str, str], Awaitable[None]]

# Exit status recorded when conmon died without writing one (it was killed itself).
UNKNOWN_EXIT_STATUS = 255


class Exits:
    def __init__(
        self, store: TaskStore, runtimes: dict[str, OCIRuntime], monitor: Monitor, dirs: TaskDirs, live: LiveTasks,
        hooks: Sequence[TeardownHook] = (),
    ) -> None:
        self._store = store
        self._runtimes = runtimes
        self._monitor = monitor
        self._dirs = dirs
        self._live = live
        self._hooks = list(hooks)
        self._handlers: set[asyncio.Task[None]] = set()

    def watch(self, namespace: str, task_id: str, exec_id: str, started: Started, oom_reported: int = 0) -> None:
        """Watch conmon of the task's init (exec id "") or of an exec process: its exit is
        handled once it ends (at once if it has ended already)."""
        task = self._live.entry(namespace, task_id)
        loop = asyncio.get_running_loop()
        task.exited[exec_id] = loop.create_future()
        if not exec_id:
            task.deleted = loop.create_future()
            self._monitor.watch(namespace, task_id, self._live.cgroup(namespace, task_id), self._on_oom, oom_reported)
        task.watches[exec_id] = ExitWatch(
            started.conmon_pid, lambda: self._spawn(self._handle_exit(namespace, task_id, exec_id, started.pid))
        )

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        handler = asyncio.get_running_loop().create_task(coroutine, name="tasks.exit")
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    async def _handle_exit(self, namespace: str, task_id: str, exec_id: str, pid: int) -> None:
        """conmon has exited: record the exit, then (for init) tear the task down."""
        task = self._live.entry(namespace, task_id)
        exit_: Exit | None = None
        try:
            task.watches.pop(exec_id, None)
            self._live.forget_pidfd(task, exec_id)
            exit_ = exit_from_file(self._dirs.task(namespace, task_id).process(exec_id).exit_dir, task_id, exec_id, pid)
            if exec_id:
                exit_ = await self._store.record_exit(namespace, exit_)
                self._live.resolve(task, exec_id, exit_)
                return
            # Under the task's lock: a start still recording the task as running (its
            # process may exit before that is written) has written it by then, so the
            # exit is recorded after it and not before its started_at.
            async with self._live.lock(namespace, task_id):
                # Read the OOM counter before recording: /tasks/oom must come before /tasks/exit.
                exit_.oom_killed = await self._monitor.check_oom(namespace, task_id)
                exit_ = await self._store.record_exit(namespace, exit_)
                self._live.resolve(task, exec_id, exit_)
                await self.finish(namespace, task_id, exit_)
        except Exception:
            log.exception("handling the exit of %s/%s %s failed", namespace, task_id, exec_id)
        finally:
            # Waiters must never hang: on a failure they get the exit if it is known.
            failure = CargoholdError(ErrorKind.UNAVAILABLE, "the exit could not be handled; see the daemon's log")
            futures = [task.exited.pop(exec_id, None)]
            if not exec_id:
                futures.append(task.deleted)
                task.deleted = None
            for future in futures:
                if future is not None and not future.done():
                    if exit_ is not None:
                        future.set_result(exit_)
                    else:
                        future.set_exception(failure)
            self._live.release(task)

    async def finish(self, namespace: str, task_id: str, exit_: Exit) -> None:
        """The init's exit is recorded: collect the exec processes' exits, tear the task
        down and delete its row (/tasks/delete); then its deletion's waiters are answered."""
        record = await self._store.get(namespace, task_id)
        layout = self._dirs.task(namespace, task_id)
        task = self._live.entry(namespace, task_id)
        for process in record.task.processes:  # execs die with the container's pid namespace
            watch = task.watches.pop(process.exec_id, None)
            if watch:
                watch.close()
            self._live.forget_pidfd(task, process.exec_id)
            if process.pid is None:
                self._live.cancel_staged(task, process.exec_id)  # attached to, never started
                continue  # added but never started: it has no exit to record
            exec_exit = exit_from_file(layout.exec(process.exec_id).exit_dir, task_id, process.exec_id, process.pid)
            exec_exit = await self._store.record_exit(namespace, exec_exit)
            self._live.resolve(task, process.exec_id, exec_exit)
        await self.teardown(namespace, task_id, record.task.runtime)
        await self._store.delete(namespace, task_id, exit_)
        self._live.resolve_deleted(task, exit_)

    async def teardown(self, namespace: str, task_id: str, runtime_name: str) -> None:
        """Remove the runtime state, the cgroup, the rootfs mount and the task dir."""
        self._monitor.unwatch(namespace, task_id)
        runtime = self._runtimes.get(runtime_name)
        layout = self._dirs.task(namespace, task_id)
        if runtime is not None and _declares_poststop_hooks(layout):  # a small local file
            # The runtime runs them at its delete, and they may look at the bundle.
            await runtime.delete(runtime_id(namespace, task_id))
            runtime = None
        # Otherwise independent: the runtime's delete (a process, the slow part) overlaps
        # the unmount and the removal of the task dir.
        await asyncio.gather(
            asyncio.to_thread(unmount_and_remove, layout.dir),
            *([runtime.delete(runtime_id(namespace, task_id))] if runtime is not None else []),
        )
        # What create steps made outside the task dir (a network's netns, CNI state), once
        # no process of the task is left; each is idempotent (recovery may run it again).
        for hook in self._hooks:
            await hook(namespace, task_id)
        await self._live.remove_cgroup(namespace, task_id)

    async def _on_oom(self, namespace: str, task_id: str, stats: CgroupStats) -> None:
        await self._store.record_oom(namespace, task_id, stats.oom_kill_count or 0, {
            "container_id": task_id,
            "oom_kill_count": stats.oom_kill_count,
            "memory_limit_bytes": stats.memory_limit_bytes,
            "memory_max_usage_bytes": stats.memory_max_usage_bytes,
        })

    async def close(self) -> None:
        """Let exits being handled finish (watching has stopped: see LiveTasks.close)."""
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)


def exit_from_file(exit_dir: Path, task_id: str, exec_id: str, pid: int) -> Exit:
    """The exit conmon wrote: each process has an exit dir of its own, holding one file."""
    found = read_exit_status(exit_dir)
    if found is None:
        log.warning("no exit file in %s: conmon died without writing one", exit_dir)
        return unknown_exit(task_id, exec_id or None, pid)
    status, exited_at = found
    return Exit(id=task_id, exec_id=exec_id or None, pid=pid, exit_status=status, exited_at=exited_at)


def unknown_exit(task_id: str, exec_id: str | None, pid: int) -> Exit:
    return Exit(id=task_id, exec_id=exec_id, pid=pid, exit_status=UNKNOWN_EXIT_STATUS, exited_at=datetime.now(UTC))


def _declares_poststop_hooks(layout: TaskLayout) -> bool:
    try:
        config = json.loads(layout.config.read_bytes())
    except (OSError, ValueError):
        return False
    return bool((config.get("hooks") or {}).get("poststop"))


async def shielded_thread(function: Callable[..., None], *args: Any) -> None:
    await asyncio.shield(asyncio.to_thread(function, *args))
