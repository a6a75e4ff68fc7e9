"""TaskService: a container's processes under a real OCI runtime, supervised by conmon.

Create mounts the container's snapshot on the bundle's rootfs, writes config.json and
has conmon run `<runtime> create`; start, kill, pause, resume, update and exec go to the
runtime. Exit means delete: when conmon exits (seen through a pidfd), the exit status it
wrote is recorded (/tasks/exit), the task is torn down (runtime state, cgroup, mount,
bundle) and its row deleted (/tasks/delete). Exits are kept so `wait` answers after the
fact. On start, `recover()` re-adopts live tasks, records the exits of those that ended
while the daemon was down, and removes whatever no task owns.

Layout: `<state>/tasks/<namespace>/<id>/` (bundle/, conmon's pid files, exit/, execs/),
`<state>/runtimes/<runtime>/` (the runtime's private state root), and
`<root>/logs/<namespace>/<id>.log` (kept until the container goes or a new task starts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import posixpath
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import CargoholdError, ErrorKind, invalid
from ..models import (
    ExecCreate,
    Exit,
    KillRequest,
    LinuxResources,
    LogLine,
    Process,
    Task,
    TaskCreate,
    TaskMetrics,
    TaskStatus,
)
from ..monitor.cgroups import CgroupStats
from ..monitor.monitor import Monitor
from ..policy import SpecPolicy
from ..snapshots.mounts import mount_all, mount_points_under, unmount
from ..snapshots.service import SnapshotService
from ..store.containers import ContainerStore
from ..store.tasks import TaskRecord, TaskStore, task_not_found
from ..topics import Topic
from .bundle import runtime_id, task_config, write_config
from .cgroups import daemon_cgroup_parent, frozen, remove_cgroup, task_cgroup
from .cgroups import remove_unowned as remove_unowned_cgroups
from .conmon import Conmon, ExitWatch, Started, conmon_alive, open_child_pidfd, read_exit_status
from .defaults import with_defaults
from .logs import DEFAULT_MAX_LINE_BYTES, read_log
from .oci import OCIRuntime, parse_signal

log = logging.getLogger(__name__)

# Exit status recorded when conmon died without writing one (it was killed itself).
UNKNOWN_EXIT_STATUS = 255
DELETE_TIMEOUT_SECONDS = 30

Key = tuple[str, str, str]  # (namespace, task id, exec id or "")
LockKey = tuple[str, ...]  # (namespace, task id) or (namespace, task id, exec id)

# The task's status after each runtime status it may be reconciled to, and the event
# that tells of the change (DESIGN: every change is an event).
_RECONCILED = {"running": TaskStatus.RUNNING, "paused": TaskStatus.PAUSED}


@dataclasses.dataclass
class _LockEntry:
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    users: int = 0


class TaskService:
    def __init__(
        self,
        store: TaskStore,
        containers: ContainerStore,
        snapshots: SnapshotService,
        state: Path,
        logs: Path,
        runtimes: dict[str, OCIRuntime],
        conmon: Conmon | None,
        missing: dict[str, str],
        policy: SpecPolicy,
        monitor: Monitor,
    ) -> None:
        self._store = store
        self._containers = containers
        self._snapshots = snapshots
        self._tasks_dir = state / "tasks"
        self._logs_dir = logs
        self._runtimes = runtimes
        self._conmon = conmon
        self._missing = missing
        self._policy = policy
        self._monitor = monitor
        self._watches: dict[Key, ExitWatch] = {}
        # Resolved once a watched process's exit is recorded / once its task is deleted.
        self._exited: dict[Key, asyncio.Future[Exit]] = {}
        self._deleted: dict[tuple[str, str], asyncio.Future[Exit]] = {}
        # Held by someone or waited for: an entry goes with its last user, so ids tried
        # and gone leave nothing behind.
        self._locks: dict[LockKey, _LockEntry] = {}
        # pidfds of the exec processes being watched: kill_exec signals through them only.
        self._pidfds: dict[Key, int] = {}
        self._cgroup_parent = daemon_cgroup_parent(state)
        # Adopted tasks whose bundle names another cgroup (made by an earlier version, before
        # each daemon had a parent of its own): (namespace, id) -> that cgroup, until teardown.
        self._adopted_cgroups: dict[tuple[str, str], str] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        # Set when the daemon starts to stop: long-polling waits answer 503 then.
        self._stopping = asyncio.Event()
        # Held while a task's cgroup parents may be created or removed (see _teardown).
        self._cgroup_lock = asyncio.Lock()

    # --- paths --------------------------------------------------------------------

    def task_dir(self, namespace: str, task_id: str) -> Path:
        return self._tasks_dir / namespace / task_id

    def log_path(self, namespace: str, task_id: str, exec_id: str | None = None) -> Path:
        if exec_id:
            return self.task_dir(namespace, task_id) / "execs" / exec_id / "log"
        return self._logs_dir / namespace / f"{task_id}.log"

    # --- lifecycle --------------------------------------------------------------------

    async def create(self, namespace: str, body: TaskCreate) -> Task:
        """Mount, write the bundle, have conmon run `<runtime> create`. Appends /tasks/create.
        Raises NOT_FOUND (container), CONFLICT (a task exists), VALIDATION (no rootfs, or the
        runtime refused the spec, with its message), UNAVAILABLE (runtime not installed)."""
        if body.stdin or body.terminal:
            raise invalid("stdin and terminal are not supported yet; create the task without them")
        container = await self._containers.get(namespace, body.container_id)
        runtime = self._runtime(container.runtime.name.value)
        conmon = self._require_conmon()
        if not container.snapshot_key:
            raise CargoholdError(
                ErrorKind.VALIDATION,
                f'container "{container.id}" has no root filesystem: set its snapshot_key to a prepared snapshot',
            )
        await self._await_previous(namespace, container.id)
        task_dir = self.task_dir(namespace, container.id)
        bundle = task_dir / "bundle"
        rootfs = bundle / "rootfs"
        async with self._lock(namespace, container.id), AsyncExitStack() as undo:
            # Again under the lock: a concurrent create may have won meanwhile.
            if await self._store.exists(namespace, container.id):
                raise CargoholdError(ErrorKind.CONFLICT, f'container "{container.id}" already has a task')
            runnable = await self._policy.runnable(namespace, container.spec)  # checked again: labels change
            config = task_config(runnable, namespace, container.id, rootfs)
            # This daemon's cgroup parent, names escaped (see runtime/cgroups.py).
            config["linux"]["cgroupsPath"] = self._cgroup(namespace, container.id)
            mounts = await self._snapshots.mounts(namespace, container.snapshotter, container.snapshot_key)
            undo.push_async_callback(_shielded_thread, _remove_task_dir, task_dir)
            await asyncio.to_thread(write_config, bundle, config)
            await asyncio.to_thread(mount_all, mounts, rootfs)
            log_path = self.log_path(namespace, container.id)
            # A new task starts a new log; the last run's stays readable if this one fails.
            previous_log = log_path.with_name(log_path.name + ".previous")
            if log_path.exists():
                log_path.rename(previous_log)
                undo.callback(previous_log.rename, log_path)
            undo.callback(log_path.unlink, missing_ok=True)
            undo.push_async_callback(self._shielded_runtime_cleanup, runtime, namespace, container.id)
            async with self._cgroup_lock:
                started = await conmon.create(runtime_id(namespace, container.id), bundle, runtime, task_dir, log_path)
            task = await self._store.add(namespace, container.id, started.pid, started.conmon_pid, runtime.name)
            self._watch(namespace, container.id, "", started)  # before any await: wait() relies on it
            undo.pop_all()
        previous_log.unlink(missing_ok=True)
        return task

    def forget_logs(self, namespace: str, task_id: str) -> None:
        """The container is gone: so is the log of its last run."""
        self.log_path(namespace, task_id).unlink(missing_ok=True)

    async def _await_previous(self, namespace: str, task_id: str) -> None:
        """Raise CONFLICT if the container has a live task; if its last task has exited but is
        still being torn down, wait for that (a client that saw the exit may start anew)."""
        previous = await self._store.find(namespace, task_id)
        if previous is None:
            return
        deleted = self._deleted.get((namespace, task_id))
        if not previous.exited or deleted is None:
            raise CargoholdError(ErrorKind.CONFLICT, f'container "{task_id}" already has a task')
        async with asyncio.timeout(DELETE_TIMEOUT_SECONDS):
            await asyncio.shield(deleted)

    async def start(self, namespace: str, task_id: str) -> Task:
        """Appends /tasks/start. Raises CONFLICT unless the task is created (not yet started).
        A task the runtime started although its row was not updated (a crash or a failed
        write in between) is recorded as started and returned."""
        async with self._lock(namespace, task_id):
            record = await self._live(namespace, task_id)
            if record.task.status is not TaskStatus.CREATED:
                raise CargoholdError(ErrorKind.CONFLICT, f'task "{task_id}" is {record.task.status.value}; '
                                     "only a created task can be started")
            runtime = self._runtime(record.task.runtime)
            try:
                await runtime.start(runtime_id(namespace, task_id))
            except CargoholdError:
                status = await runtime.status(runtime_id(namespace, task_id))
                if status not in _RECONCILED:
                    raise
                return await self._reconcile(record, status)
            return await self._store.set_status(
                namespace, task_id, TaskStatus.RUNNING, Topic.TASK_START,
                {"container_id": task_id, "pid": record.task.pid},
            )

    async def kill(self, namespace: str, task_id: str, request: KillRequest) -> None:
        number = parse_signal(request.signal)
        record = await self._live(namespace, task_id)
        await self._runtime(record.task.runtime).kill(runtime_id(namespace, task_id), number, request.all)

    async def pause(self, namespace: str, task_id: str) -> Task:
        return await self._freeze(namespace, task_id, pause=True)

    async def resume(self, namespace: str, task_id: str) -> Task:
        return await self._freeze(namespace, task_id, pause=False)

    async def _freeze(self, namespace: str, task_id: str, pause: bool) -> Task:
        """Pause or resume from the state the runtime reports, not the row's: the row is
        corrected first (with its event) if it disagrees. If the row cannot be written after
        the runtime's change, the change is undone so that the two still agree."""
        async with self._lock(namespace, task_id):
            record = await self._live(namespace, task_id)
            runtime = self._runtime(record.task.runtime)
            rid = runtime_id(namespace, task_id)
            actual = await runtime.status(rid)
            if actual in _RECONCILED:
                await self._reconcile(record, actual)
            wanted = "running" if pause else "paused"
            if actual != wanted:
                verb = "paused" if pause else "resumed"
                now = "exited" if actual in (None, "stopped") else actual
                raise CargoholdError(
                    ErrorKind.CONFLICT, f'task "{task_id}" is {now}; only a {wanted} task can be {verb}'
                )
            await (runtime.pause(rid) if pause else runtime.resume(rid))
            status, topic = (
                (TaskStatus.PAUSED, Topic.TASK_PAUSED) if pause else (TaskStatus.RUNNING, Topic.TASK_RESUMED)
            )
            try:
                return await self._store.set_status(namespace, task_id, status, topic, {"container_id": task_id})
            except BaseException:
                log.warning("recording %s/%s as %s failed: undoing it in %s", namespace, task_id, status.value,
                            runtime.name)
                with suppress(CargoholdError):
                    await asyncio.shield(runtime.resume(rid) if pause else runtime.pause(rid))
                raise

    async def _reconcile(self, record: TaskRecord, actual: str) -> Task:
        """Make the row say what the runtime reports (`running` or `paused`), with the event
        of that change: /tasks/start (it was created), /tasks/paused or /tasks/resumed."""
        status = _RECONCILED[actual]
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
        return await self._store.set_status(task.namespace, task.id, status, topic, payload)

    async def pids(self, namespace: str, task_id: str) -> list[int]:
        record = await self._live(namespace, task_id)
        return await self._runtime(record.task.runtime).pids(runtime_id(namespace, task_id))

    async def update(self, namespace: str, task_id: str, resources: LinuxResources) -> Task:
        """Live cgroup update through the runtime. Raises VALIDATION with its message."""
        record = await self._live(namespace, task_id)
        document = resources.model_dump(mode="json", exclude_none=True)
        if not document:
            raise invalid("resources is empty: give memory, cpu or pids")
        await self._runtime(record.task.runtime).update(runtime_id(namespace, task_id), document)
        return record.task

    async def get(self, namespace: str, task_id: str) -> Task:
        return (await self._live(namespace, task_id)).task

    async def find(self, namespace: str) -> list[Task]:
        return await self._store.list_in(namespace)

    async def count_by_status(self) -> dict[str, int]:
        """Live tasks of every namespace by status (for `cargohold_tasks`)."""
        return await self._store.count_by_status()

    async def wait(self, namespace: str, task_id: str, exec_id: str | None = None) -> Exit:
        """The exit of the task (or exec process): waits while it runs, else answers from the
        stored exits. Raises NOT_FOUND when there is neither. A task's wait answers once it
        is also deleted (exit means delete), so the container can be deleted right after."""
        pending = (None if exec_id else self._deleted.get((namespace, task_id))) or self._exited.get(
            (namespace, task_id, exec_id or "")
        )
        if pending is not None:
            return await self._unless_stopping(pending)
        # Not watched: it has exited (the futures are dropped only after the exit is stored).
        found = await self._store.last_exit(namespace, task_id, exec_id)
        if found is None:
            what = f'exec process "{exec_id}" of task "{task_id}"' if exec_id else f'task "{task_id}"'
            raise CargoholdError(ErrorKind.NOT_FOUND, f'no {what} is running or has exited in namespace "{namespace}"')
        return found

    def stop_waiting(self) -> None:
        """The daemon is stopping: waits in progress answer now instead of holding it up."""
        self._stopping.set()

    async def _unless_stopping(self, pending: asyncio.Future[Exit]) -> Exit:
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            either: set[asyncio.Future[Any]] = {pending, stopping}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not pending.done():
            raise CargoholdError(
                ErrorKind.UNAVAILABLE,
                "the daemon is stopping; the task keeps running: wait again once the daemon is back",
            )
        return pending.result()

    async def delete(self, namespace: str, task_id: str) -> Exit:
        """Kill (SIGKILL, every process) if needed and delete; returns the exit once the
        teardown is done."""
        record = await self._live(namespace, task_id)
        deleted = self._deleted.get((namespace, task_id))
        if deleted is None:
            raise task_not_found(namespace, task_id)
        runtime = self._runtime(record.task.runtime)
        rid = runtime_id(namespace, task_id)
        # The cgroup's freezer, not the row: a frozen process cannot die, so a task the
        # runtime has paused is thawed after the kill (the signal waits for it) whatever
        # the row says.
        paused = frozen(self._cgroup(namespace, task_id))
        with suppress(CargoholdError):  # it may be exiting already
            await runtime.kill(rid, 9, all_processes=True)
        if paused:
            with suppress(CargoholdError):
                await runtime.resume(rid)
        async with asyncio.timeout(DELETE_TIMEOUT_SECONDS):
            return await asyncio.shield(deleted)

    async def logs(
        self,
        namespace: str,
        task_id: str,
        exec_id: str | None = None,
        tail: int | None = None,
        since: datetime | None = None,
        follow: bool = False,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> AsyncIterator[LogLine]:
        """The task's (or exec process's) output; the last run's log stays readable after
        it exits until the container goes or a new task starts. Raises NOT_FOUND."""
        path = self.log_path(namespace, task_id, exec_id)
        key = (namespace, task_id, exec_id or "")
        if not path.exists() and key not in self._watches:
            await self._containers.get(namespace, task_id)  # NOT_FOUND for an unknown container
            what = f'exec process "{exec_id}" of task "{task_id}"' if exec_id else f'task "{task_id}"'
            raise CargoholdError(ErrorKind.NOT_FOUND, f"no log for {what}: it has not run")

        async def running() -> bool:
            return key in self._watches

        return read_log(
            path, tail=tail, since=since, follow=running if follow else None, max_line_bytes=max_line_bytes
        )

    # --- exec ------------------------------------------------------------------------

    async def add_exec(self, namespace: str, task_id: str, body: ExecCreate) -> Process:
        record = await self._live(namespace, task_id)
        if record.task.status is not TaskStatus.RUNNING:
            raise CargoholdError(ErrorKind.CONFLICT, f'task "{task_id}" is {record.task.status.value}; '
                                 "exec needs a running task")
        spec = body.process.model_dump(mode="json", exclude_unset=True)
        if spec.get("terminal"):
            raise CargoholdError(ErrorKind.VALIDATION, "process.terminal is not supported yet; set it to false")
        spec = with_defaults({"process": spec})["process"]
        await self._policy.check_process(namespace, spec)
        return await self._store.add_process(namespace, task_id, body.exec_id, spec)

    async def start_exec(self, namespace: str, task_id: str, exec_id: str) -> Process:
        """Run the added exec process, once: concurrent starts are serialized and all but
        the first answer CONFLICT. Appends /tasks/exec-started."""
        async with self._lock(namespace, task_id, exec_id):
            record = await self._live(namespace, task_id)
            process = await self._store.get_process(namespace, task_id, exec_id)
            if process.process.status != "created":
                raise CargoholdError(ErrorKind.CONFLICT, f'exec process "{exec_id}" was started already')
            await self._policy.check_process(namespace, process.spec)  # the label may be gone since
            exec_dir = self.task_dir(namespace, task_id) / "execs" / exec_id
            spec_path = exec_dir / "process.json"
            await asyncio.to_thread(_write_json, spec_path, process.spec)
            started = await self._require_conmon().exec(
                runtime_id(namespace, task_id), exec_id, spec_path, self._runtime(record.task.runtime), exec_dir,
                self.log_path(namespace, task_id, exec_id),
            )
            key = (namespace, task_id, exec_id)
            self._keep_pidfd(key, started)
            try:
                result = await self._store.start_process(namespace, task_id, exec_id, started.pid, started.conmon_pid)
            except BaseException:
                # Unrecorded, it would run again at the next start: it must not run now (nor
                # be taken by recovery for a start that happened: its pid file goes).
                self._signal_exec(key, signal.SIGKILL)
                self._forget_pidfd(key)
                (exec_dir / "pid").unlink(missing_ok=True)
                raise
            self._watch(namespace, task_id, exec_id, started)
            return result

    async def kill_exec(self, namespace: str, task_id: str, exec_id: str, request: KillRequest) -> None:
        """Signal the exec process through the pidfd opened when it started (or was
        re-adopted): a process that has exited is never confused with one that reused its
        pid. Raises CONFLICT when it has not started or has exited, NOT_FOUND when unknown."""
        number = parse_signal(request.signal)
        try:
            process = await self._store.get_process(namespace, task_id, exec_id)
        except CargoholdError as error:
            if error.kind is ErrorKind.NOT_FOUND and await self._store.last_exit(namespace, task_id, exec_id):
                raise CargoholdError(ErrorKind.CONFLICT, f'exec process "{exec_id}" has exited') from None
            raise
        if process.process.pid is None:
            raise CargoholdError(ErrorKind.CONFLICT, f'exec process "{exec_id}" has not been started')
        # No await from the look-up to the signal: the pidfd cannot be closed in between.
        if not self._signal_exec((namespace, task_id, exec_id), number):
            raise CargoholdError(ErrorKind.CONFLICT, f'exec process "{exec_id}" has exited')

    def _keep_pidfd(self, key: Key, started: Started) -> None:
        fd = open_child_pidfd(started.pid, started.conmon_pid)
        if fd is None:
            # Gone already (its exit is on its way) or not the process conmon supervises.
            log.info("no pidfd for exec %s/%s %s (pid %d): it cannot be signalled", *key, started.pid)
            return
        self._pidfds[key] = fd

    def _signal_exec(self, key: Key, number: int) -> bool:
        """Whether the signal was sent (False: the process is gone or not known)."""
        fd = self._pidfds.get(key)
        if fd is None:
            return False
        try:
            signal.pidfd_send_signal(fd, number)
        except ProcessLookupError:
            return False
        return True

    def _forget_pidfd(self, key: Key) -> None:
        fd = self._pidfds.pop(key, None)
        if fd is not None:
            os.close(fd)

    # --- exits ------------------------------------------------------------------------

    def _watch(self, namespace: str, task_id: str, exec_id: str, started: Started, oom_reported: int = 0) -> None:
        key = (namespace, task_id, exec_id)
        loop = asyncio.get_running_loop()
        self._exited[key] = loop.create_future()
        if not exec_id:
            self._deleted[(namespace, task_id)] = loop.create_future()
            self._monitor.watch(namespace, task_id, self._cgroup(namespace, task_id), self._on_oom, oom_reported)
        self._watches[key] = ExitWatch(started.conmon_pid, lambda: self._spawn(self._handle_exit(key, started.pid)))

    def _spawn(self, coroutine: Any) -> None:
        handler = asyncio.get_running_loop().create_task(coroutine, name="tasks.exit")
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    async def _handle_exit(self, key: Key, pid: int) -> None:
        """conmon has exited: record the exit, then (for init) tear the task down."""
        namespace, task_id, exec_id = key
        exit_: Exit | None = None
        try:
            self._watches.pop(key, None)
            self._forget_pidfd(key)
            work_dir = self.task_dir(namespace, task_id)
            exit_dir = (work_dir / "execs" / exec_id / "exit") if exec_id else work_dir / "exit"
            exit_ = _exit_from_file(exit_dir, task_id, exec_id, pid)
            if exec_id:
                exit_ = await self._store.record_exit(namespace, exit_)
                self._resolve(key, exit_)
                return
            # Under the task's lock: a start still recording the task as running (its
            # process may exit before that is written) has written it by then, so the
            # exit is recorded after it and not before its started_at.
            async with self._lock(namespace, task_id):
                # Read the OOM counter before recording: /tasks/oom must come before /tasks/exit.
                exit_.oom_killed = await self._monitor.check_oom(namespace, task_id)
                exit_ = await self._store.record_exit(namespace, exit_)
                self._resolve(key, exit_)
                await self._finish(namespace, task_id, exit_)
        except Exception:
            log.exception("handling the exit of %s/%s %s failed", namespace, task_id, exec_id)
        finally:
            # Waiters must never hang: on a failure they get the exit if it is known.
            failure = CargoholdError(ErrorKind.UNAVAILABLE, "the exit could not be handled; see the daemon's log")
            for future in (self._exited.pop(key, None), None if exec_id else self._deleted.pop(key[:2], None)):
                if future is not None and not future.done():
                    if exit_ is not None:
                        future.set_result(exit_)
                    else:
                        future.set_exception(failure)

    async def _finish(self, namespace: str, task_id: str, exit_: Exit) -> None:
        record = await self._store.get(namespace, task_id)
        for process in record.task.processes:  # execs die with the container's pid namespace
            watch = self._watches.pop((namespace, task_id, process.exec_id), None)
            if watch:
                watch.close()
            self._forget_pidfd((namespace, task_id, process.exec_id))
            if process.pid is None:
                continue  # added but never started: it has no exit to record
            exec_exit = _exit_from_file(
                self.task_dir(namespace, task_id) / "execs" / process.exec_id / "exit", task_id, process.exec_id,
                process.pid or 0,
            )
            exec_exit = await self._store.record_exit(namespace, exec_exit)
            self._resolve((namespace, task_id, process.exec_id), exec_exit)
        await self._teardown(namespace, task_id, record.task.runtime)
        await self._store.delete(namespace, task_id, exit_)
        deleted = self._deleted.pop((namespace, task_id), None)
        if deleted is not None and not deleted.done():
            deleted.set_result(exit_)

    def _resolve(self, key: Key, exit_: Exit) -> None:
        future = self._exited.pop(key, None)
        if future is not None and not future.done():
            future.set_result(exit_)

    async def _teardown(self, namespace: str, task_id: str, runtime_name: str) -> None:
        """Remove the runtime state, the cgroup, the rootfs mount and the task dir."""
        self._monitor.unwatch(namespace, task_id)
        runtime = self._runtimes.get(runtime_name)
        task_dir = self.task_dir(namespace, task_id)
        if runtime is not None and _declares_poststop_hooks(task_dir / "bundle"):  # a small local file
            # The runtime runs them at its delete, and they may look at the bundle.
            await runtime.delete(runtime_id(namespace, task_id))
            runtime = None
        # Otherwise independent: the runtime's delete (a process, the slow part) overlaps
        # the unmount and the removal of the task dir.
        await asyncio.gather(
            asyncio.to_thread(_remove_task_dir, task_dir),
            *([runtime.delete(runtime_id(namespace, task_id))] if runtime is not None else []),
        )
        await self._remove_cgroup(namespace, task_id)

    async def _remove_cgroup(self, namespace: str, task_id: str) -> None:
        """The task's cgroup, and its parents up to this daemon's while they are empty (an
        earlier version's layout: up to the namespace's)."""
        adopted = self._adopted_cgroups.pop((namespace, task_id), None)
        group, up_to = (adopted, posixpath.dirname(adopted)) if adopted else (
            self._cgroup(namespace, task_id), self._cgroup_parent
        )
        async with self._cgroup_lock:
            await asyncio.to_thread(remove_cgroup, group, up_to)

    async def _on_oom(self, namespace: str, task_id: str, stats: CgroupStats) -> None:
        await self._store.record_oom(namespace, task_id, stats.oom_kill_count or 0, {
            "container_id": task_id,
            "oom_kill_count": stats.oom_kill_count,
            "memory_limit_bytes": stats.memory_limit_bytes,
            "memory_max_usage_bytes": stats.memory_max_usage_bytes,
        })

    async def metrics(self, namespace: str, task_id: str) -> TaskMetrics:
        """The monitor's latest figures (read now if it has none yet). Raises NOT_FOUND."""
        await self._live(namespace, task_id)
        figures = self._monitor.latest(namespace, task_id) or await self._monitor.read_now(namespace, task_id)
        if figures is None:
            raise CargoholdError(ErrorKind.NOT_FOUND, f'task "{task_id}" has no cgroup figures (it is exiting)')
        return TaskMetrics(
            container_id=task_id, namespace=namespace, read_at=figures.read_at, **dataclasses.asdict(figures.stats)
        )

    async def _shielded_runtime_cleanup(self, runtime: OCIRuntime, namespace: str, task_id: str) -> None:
        async def cleanup() -> None:
            await runtime.delete(runtime_id(namespace, task_id))
            await self._remove_cgroup(namespace, task_id)

        await asyncio.shield(cleanup())

    # --- restart ----------------------------------------------------------------------

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
                await self._finish(namespace, task_id, exit_ or _unknown_exit(task_id, None, record.task.pid))
            else:
                actual = statuses.get(record.task.runtime, {}).get(runtime_id(namespace, task_id))
                if actual in _RECONCILED:
                    record = dataclasses.replace(record, task=await self._reconcile(record, actual))
                self._adopt_or_collect(namespace, task_id, "", record, record.task.pid)
        await self._remove_unowned({(r.task.namespace, r.task.id) for r in records})

    async def _record_unrecorded_start(self, namespace: str, task_id: str, process: Process) -> int | None:
        """An exec process that conmon ran though its row still says created (a crash in
        between): record it as started (/tasks/exec-started), so it is watched and never run
        twice. Its pid, or None when it never ran: the runtime writes the pid file only
        then, and one older than the row is an earlier exec's of the same id."""
        exec_id = process.exec_id
        exec_dir = self.task_dir(namespace, task_id) / "execs" / exec_id
        try:
            conmon_pid = int((exec_dir / "conmon.pid").read_text().strip())
            pid_file = exec_dir / "pid"
            pid = int(pid_file.read_text().strip())
            if datetime.fromtimestamp(pid_file.stat().st_mtime, UTC) < process.created_at:
                return None
        except (OSError, ValueError):
            return None
        log.warning("exec %s/%s %s ran but was not recorded as started: recording it", namespace, task_id, exec_id)
        await self._store.start_process(namespace, task_id, exec_id, pid, conmon_pid)
        return pid

    def _adopt_or_collect(self, namespace: str, task_id: str, exec_id: str, record: TaskRecord, pid: int) -> None:
        work_dir = self.task_dir(namespace, task_id) / ("execs/" + exec_id if exec_id else "")
        try:
            conmon_pid = int((work_dir / "conmon.pid").read_text().strip())
        except (OSError, ValueError):
            conmon_pid = record.conmon_pid if not exec_id else 0
        rid = runtime_id(namespace, task_id)
        name = f"{rid}-{exec_id}" if exec_id else rid
        alive = bool(conmon_pid) and conmon_alive(conmon_pid, name)
        started = Started(conmon_pid=conmon_pid if alive else 0, pid=pid)
        if exec_id and alive:
            key = (namespace, task_id, exec_id)
            self._keep_pidfd(key, started)
            if key not in self._pidfds:
                # The row's pid is not the process conmon supervises: trust runc's pid file.
                with suppress(OSError, ValueError):
                    started = Started(conmon_pid=conmon_pid, pid=int((work_dir / "pid").read_text().strip()))
                    self._keep_pidfd(key, started)
        if not exec_id:
            bundled = _bundle_cgroup(self.task_dir(namespace, task_id) / "bundle")
            if bundled is not None and bundled != self._cgroup(namespace, task_id):
                self._adopted_cgroups[(namespace, task_id)] = bundled
        # A conmon that ended while we were away is handled as if it had just exited:
        # the watch fires at once when the pid is gone.
        self._watch(namespace, task_id, exec_id, started, record.oom_kills)

    async def _remove_unowned(self, owned: set[tuple[str, str]]) -> None:
        if self._tasks_dir.is_dir():
            for namespace_dir in self._tasks_dir.iterdir():
                for task_dir in namespace_dir.iterdir():
                    if (namespace_dir.name, task_dir.name) not in owned:
                        log.info("removing %s: no task owns it", task_dir)
                        _kill_stray_conmon(task_dir, runtime_id(namespace_dir.name, task_dir.name))
                        for runtime in self._runtimes.values():
                            await runtime.delete(runtime_id(namespace_dir.name, task_dir.name))
                        await asyncio.to_thread(_remove_task_dir, task_dir)
                        await asyncio.to_thread(
                            remove_cgroup, self._cgroup(namespace_dir.name, task_dir.name), self._cgroup_parent
                        )
                with suppress(OSError):
                    namespace_dir.rmdir()
        owned_ids = {runtime_id(namespace, task_id) for namespace, task_id in owned}
        for runtime in self._runtimes.values():
            for container_id in await runtime.list_ids():
                if container_id not in owned_ids:
                    log.info("deleting %s state of %s: no task owns it", runtime.name, container_id)
                    await runtime.delete(container_id)
        # Last: the runtime deletes above empty the cgroups of what they killed.
        async with self._cgroup_lock:
            # Only below this daemon's parent: another daemon's cgroups are not ours to judge.
            for group in await asyncio.to_thread(remove_unowned_cgroups, owned, self._cgroup_parent):
                log.info("removed cgroup %s: no task owns it", group)

    async def close(self) -> None:
        """Stop watching (the tasks keep running; the next daemon re-adopts them)."""
        for watch in self._watches.values():
            watch.close()
        self._watches.clear()
        for key in list(self._pidfds):
            self._forget_pidfd(key)
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    # --- helpers ----------------------------------------------------------------------

    def _runtime(self, name: str) -> OCIRuntime:
        if name in self._runtimes:
            return self._runtimes[name]
        raise CargoholdError(
            ErrorKind.UNAVAILABLE, self._missing.get(name, f"runtime {name!r} is not available on this host")
        )

    def _require_conmon(self) -> Conmon:
        if self._conmon is None:
            raise CargoholdError(ErrorKind.UNAVAILABLE, self._missing["conmon"])
        return self._conmon

    @asynccontextmanager
    async def _lock(self, *key: str) -> AsyncIterator[None]:
        """Hold the lock of a task (namespace, id) or of one exec process (…, exec id)."""
        entry = self._locks.setdefault(key, _LockEntry())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[key]

    def _cgroup(self, namespace: str, task_id: str) -> str:
        return self._adopted_cgroups.get((namespace, task_id)) or task_cgroup(self._cgroup_parent, namespace, task_id)

    async def _live(self, namespace: str, task_id: str) -> TaskRecord:
        """The task, unless it is missing or already exiting (both NOT_FOUND)."""
        if self._conmon is None:
            self._require_conmon()
        record = await self._store.get(namespace, task_id)
        if record.exited:
            raise task_not_found(namespace, task_id)
        return record


def _exit_from_file(exit_dir: Path, task_id: str, exec_id: str, pid: int) -> Exit:
    """The exit conmon wrote: each process has an exit dir of its own, holding one file."""
    found = read_exit_status(exit_dir)
    if found is None:
        log.warning("no exit file in %s: conmon died without writing one", exit_dir)
        return _unknown_exit(task_id, exec_id or None, pid)
    status, exited_at = found
    return Exit(id=task_id, exec_id=exec_id or None, pid=pid, exit_status=status, exited_at=exited_at)


def _unknown_exit(task_id: str, exec_id: str | None, pid: int) -> Exit:
    return Exit(id=task_id, exec_id=exec_id, pid=pid, exit_status=UNKNOWN_EXIT_STATUS, exited_at=datetime.now(UTC))


def _kill_stray_conmon(task_dir: Path, rid: str) -> None:
    for pid_file in [task_dir / "conmon.pid", *task_dir.glob("execs/*/conmon.pid")]:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if conmon_alive(pid, rid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def _bundle_cgroup(bundle: Path) -> str | None:
    """The cgroup the task's runtime was given (`linux.cgroupsPath` of its config.json)."""
    try:
        path = json.loads((bundle / "config.json").read_bytes())["linux"]["cgroupsPath"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if isinstance(path, str) and path.startswith("/") else None


def _declares_poststop_hooks(bundle: Path) -> bool:
    try:
        config = json.loads((bundle / "config.json").read_bytes())
    except (OSError, ValueError):
        return False
    return bool((config.get("hooks") or {}).get("poststop"))


def _remove_task_dir(task_dir: Path) -> None:
    if task_dir.exists():
        for point in mount_points_under(task_dir):
            unmount(point)
        shutil.rmtree(task_dir, ignore_errors=True)


async def _shielded_thread(function: Callable[..., None], *args: Any) -> None:
    await asyncio.shield(asyncio.to_thread(function, *args))
