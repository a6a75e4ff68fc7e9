"""Restart recovery and orphan cleanup, run once when the daemon starts.

Re-adopt tasks whose conmon lives, each first reconciled with the runtime's own status;
record the exits of those that ended while the daemon was down (published once); tear
down whatever no task owns (task dirs, mounts, runtime state, cgroups). `reconcile` is
here too: it makes a row say what the runtime reports, which is also what start and
pause/resume need after a crash between a runtime change and its row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from ..errors import CargoholdError
from ..models import Process, Task, TaskStatus
from ..snapshots.mounts import unmount_and_remove
from ..store.tasks import TaskRecord, TaskStore
from ..topics import Topic
from .bundle import runtime_id
from .cgroups import remove_unowned as remove_unowned_cgroups
from .conmon import Started, conmon_alive
from .exits import Exits, unknown_exit
from .layout import TaskDirs, TaskLayout, read_pid
from .live import LiveTasks
from .oci import OCIRuntime

log = logging.getLogger(__name__)

# The task's status after each runtime status it may be reconciled to.
RECONCILED = {"running": TaskStatus.RUNNING, "paused": TaskStatus.PAUSED}


async def reconcile(store: TaskStore, record: TaskRecord, actual: str) -> Task:
    """Make the row say what the runtime reports (`running` or `paused`), with the event
    of that change: /tasks/start (it was created), /tasks/paused or /tasks/resumed."""
    status = RECONCILED[actual]
    task = record.task
    if task.status is status:
        return task
    payload: dict[str, Any]
    if status is TaskStatus.PAUSED:
        topic, payload = Topic.TASK_PAUSED, {"container_id": task.id}
    elif task.status is TaskStatus.CREATED:
        topic, payload = Topic.TASK_START, {"container_id": task.id, "pid": task.pid}
    else:
        topic, payload = Topic.TASK_RESUMED, {"container_id": task.id}
    log.warning("task %s/%s is %s in the runtime but %s in the store: recording it as %s",
                task.namespace, task.id, actual, task.status.value, status.value)
    return await store.set_status(task.namespace, task.id, status, topic, payload)


class Recovery:
    def __init__(
        self, store: TaskStore, runtimes: dict[str, OCIRuntime], dirs: TaskDirs, live: LiveTasks, exits: Exits
    ) -> None:
        self._store = store
        self._runtimes = runtimes
        self._dirs = dirs
        self._live = live
        self._exits = exits

    async def recover(self) -> None:
        """Re-adopt tasks whose conmon lives, each first reconciled with the runtime's own
        status (after a crash between a runtime change and its row, the row is corrected
        with the event of the change); record the exits of those that ended while the
        daemon was down (each published once: `record_exit` is idempotent; a task the
        runtime reports stopped is collected when its conmon, which reaps it, exits); tear
        down what no task owns (task dirs, mounts, runtime state, cgroups)."""
        records = await self._store.list_records()
        statuses: dict[str, dict[str, str]] = {}
        for name, runtime in self._runtimes.items():
            try:
                statuses[name] = await runtime.statuses()  # one call for all its containers
            except CargoholdError as error:
                log.warning("%s list failed (%s): the tasks' rows are taken as they are", name, error.detail)
        for record in records:
            namespace, task_id = record.task.namespace, record.task.id
            for process in record.task.processes:
                pid = process.pid
                if process.status == "created" and not record.exited:
                    pid = await self._record_unrecorded_start(namespace, task_id, process)
                if pid is not None and process.status in ("created", "running"):
                    self._adopt_or_collect(namespace, task_id, process.exec_id, record, pid)
            if record.exited:  # the exit was recorded, the teardown did not finish
                exit_ = await self._store.last_exit(namespace, task_id)
                async with self._live.lock(namespace, task_id):  # as an exit's handling holds it
                    await self._exits.finish(namespace, task_id, exit_ or unknown_exit(task_id, None, record.task.pid))
            else:
                actual = statuses.get(record.task.runtime, {}).get(runtime_id(namespace, task_id))
                if actual in RECONCILED:
                    record = dataclasses.replace(record, task=await reconcile(self._store, record, actual))
                self._adopt_or_collect(namespace, task_id, "", record, record.task.pid)
        await self._remove_unowned({(r.task.namespace, r.task.id) for r in records})

    async def _record_unrecorded_start(self, namespace: str, task_id: str, process: Process) -> int | None:
        """An exec process that conmon ran though its row still says created (a crash in
        between): record it as started (/tasks/exec-started), so it is watched and never run
        twice. Its pid, or None when it never ran: the runtime writes the pid file only
        then, and one older than the row is an earlier exec's of the same id."""
        exec_id = process.exec_id
        files = self._dirs.task(namespace, task_id).exec(exec_id)
        try:
            conmon_pid = int(files.conmon_pid_file.read_text().strip())
            pid = int(files.pid_file.read_text().strip())
            if datetime.fromtimestamp(files.pid_file.stat().st_mtime, UTC) < process.created_at:
                return None
        except (OSError, ValueError):
            return None
        log.warning("exec %s/%s %s ran but was not recorded as started: recording it", namespace, task_id, exec_id)
        await self._store.start_process(namespace, task_id, exec_id, pid, conmon_pid)
        return pid

    def _adopt_or_collect(self, namespace: str, task_id: str, exec_id: str, record: TaskRecord, pid: int) -> None:
        layout = self._dirs.task(namespace, task_id)
        files = layout.process(exec_id)
        conmon_pid = files.conmon_pid()
        if conmon_pid is None:
            conmon_pid = record.conmon_pid if not exec_id else 0
        rid = runtime_id(namespace, task_id)
        name = f"{rid}-{exec_id}" if exec_id else rid
        alive = bool(conmon_pid) and conmon_alive(conmon_pid, name)
        started = Started(conmon_pid=conmon_pid if alive else 0, pid=pid)
        task = self._live.entry(namespace, task_id)
        if exec_id and alive:
            self._live.keep_pidfd(task, exec_id, started)
            if exec_id not in task.pidfds:
                # The row's pid is not the process conmon supervises: trust runc's pid file.
                runc_pid = files.pid()
                if runc_pid is not None:
                    started = Started(conmon_pid=conmon_pid, pid=runc_pid)
                    self._live.keep_pidfd(task, exec_id, started)
        if not exec_id:
            bundled = _bundle_cgroup(layout)
            if bundled is not None and bundled != self._live.cgroup(namespace, task_id):
                task.adopted_cgroup = bundled
        # A conmon that ended while we were away is handled as if it had just exited:
        # the watch fires at once when the pid is gone.
        self._exits.watch(namespace, task_id, exec_id, started, record.oom_kills)

    async def _remove_unowned(self, owned: set[tuple[str, str]]) -> None:
        for namespace, task_id in list(self._dirs.on_disk()):
            if (namespace, task_id) in owned:
                continue
            layout = self._dirs.task(namespace, task_id)
            log.info("removing %s: no task owns it", layout.dir)
            _kill_stray_conmon(layout, runtime_id(namespace, task_id))
            for runtime in self._runtimes.values():
                await runtime.delete(runtime_id(namespace, task_id))
            await asyncio.to_thread(unmount_and_remove, layout.dir)
            async with self._live.lock(namespace, task_id):
                await self._live.remove_cgroup(namespace, task_id)
        for namespace_dir in self._dirs.namespace_dirs():
            with suppress(OSError):
                namespace_dir.rmdir()
        owned_ids = {runtime_id(namespace, task_id) for namespace, task_id in owned}
        for runtime in self._runtimes.values():
            for container_id in await runtime.statuses():
                if container_id not in owned_ids:
                    log.info("deleting %s state of %s: no task owns it", runtime.name, container_id)
                    await runtime.delete(container_id)
        # Last: the runtime deletes above empty the cgroups of what they killed.
        async with self._live.cgroup_lock:
            # Only below this daemon's parent: another daemon's cgroups are not ours to judge.
            for group in await asyncio.to_thread(remove_unowned_cgroups, owned, self._live.cgroup_parent):
                log.info("removed cgroup %s: no task owns it", group)


def _kill_stray_conmon(layout: TaskLayout, rid: str) -> None:
    for pid_file in layout.conmon_pid_files():
        pid = read_pid(pid_file)
        if pid is not None and conmon_alive(pid, rid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _bundle_cgroup(layout: TaskLayout) -> str | None:
    """The cgroup the task's runtime was given (`linux.cgroupsPath` of its config.json)."""
    try:
        path = json.loads(layout.config.read_bytes())["linux"]["cgroupsPath"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if isinstance(path, str) and path.startswith("/") else None
