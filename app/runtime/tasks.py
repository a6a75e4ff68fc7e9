"""TaskService: the rules of a container's task under a real OCI runtime, supervised by conmon.

Create checks the rules and runs its steps (`create.py`: task dir, rootfs, bundle, log,
shim, each with its undo); start, kill, pause, resume, update and exec go to the runtime.
Exit means delete: exits and teardown are `exits.py`'s; restart recovery and orphan
cleanup are `recovery.py`'s; what the daemon holds for each live task (locks, watches,
waiters' futures, pidfds, cgroup) is `live.py`'s; where its files are is `layout.py`'s.
This module runs no teardown of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from datetime import datetime
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
from ..monitor.monitor import Monitor
from ..policy import SpecPolicy
from ..snapshots.service import SnapshotService
from ..store.containers import ContainerStore
from ..store.tasks import TaskRecord, TaskStore, has_task, task_not_found
from ..topics import Topic
from .bundle import runtime_id, task_config
from .cgroups import frozen, remove_cgroup
from .conmon import Conmon, Stdio, read_stdio, write_stdio
from .create import BundleStep, CreateContext, CreateStep, LogStep, RootfsStep, ShimStep, TaskDirStep, run_steps
from .defaults import with_defaults
from .exits import Exits, TeardownHook
from .layout import ProcessFiles, TaskDirs
from .live import LiveTasks
from .logs import DEFAULT_MAX_LINE_BYTES, TaskLogs, read_log
from .oci import OCIRuntime, parse_signal
from .recovery import RECONCILED, Recovery, reconcile

log = logging.getLogger(__name__)

DELETE_TIMEOUT_SECONDS = 30


class TaskService:
    def __init__(
        self,
        store: TaskStore,
        containers: ContainerStore,
        snapshots: SnapshotService,
        state: Path,
        logs: TaskLogs,
        runtimes: dict[str, OCIRuntime],
        conmon: Conmon | None,
        missing: dict[str, str],
        policy: SpecPolicy,
        monitor: Monitor,
        extra_steps: Sequence[CreateStep] = (),
        teardown: Sequence[TeardownHook] = (),
    ) -> None:
        self._store = store
        self._containers = containers
        self._dirs = TaskDirs(state / "tasks", logs)
        self._runtimes = runtimes
        self._conmon = conmon
        self._missing = missing
        self._policy = policy
        self._monitor = monitor
        self._live = LiveTasks(state)
        # `teardown`: how to undo, at a task's teardown, what `extra_steps` made outside the task dir.
        self._exits = Exits(store, runtimes, monitor, self._dirs, self._live, teardown)
        self._recovery = Recovery(store, runtimes, self._dirs, self._live, self._exits)
        # The steps of create, in order; a new capability's step joins before the bundle's
        # (it may edit the spec the bundle writes) or before the shim's.
        self._create_steps: list[CreateStep] = [
            TaskDirStep(), RootfsStep(snapshots), *extra_steps, BundleStep(), LogStep(),
            *([ShimStep(conmon, self._live)] if conmon is not None else []),
        ]
        # Set when the daemon starts to stop: long-polling waits answer 503 then.
        self._stopping = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------

    async def create(self, namespace: str, body: TaskCreate) -> Task:
        """Mount, write the bundle, have conmon run `<runtime> create`. Appends /tasks/create.
        Raises NOT_FOUND (container), CONFLICT (a task exists), VALIDATION (no rootfs, or the
        runtime refused the spec, with its message), UNAVAILABLE (runtime not installed)."""
        container = await self._containers.get(namespace, body.container_id)
        runtime = self._runtime(container.runtime.name.value)
        self._require_conmon()
        if not container.snapshot_key:
            raise CargoholdError(
                ErrorKind.VALIDATION,
                f'container "{container.id}" has no root filesystem: set its snapshot_key to a prepared snapshot',
            )
        await self._await_previous(namespace, container.id)
        layout = self._dirs.task(namespace, container.id)
        async with self._live.lock(namespace, container.id), AsyncExitStack() as undo:
            # Again under the lock: a concurrent create may have won meanwhile.
            await self._store.refuse_task(namespace, container.id)
            runnable = await self._policy.runnable(namespace, container.spec)  # checked again: labels change
            # Under this daemon's cgroup parent, names escaped (see runtime/cgroups.py).
            config = task_config(runnable, layout.rootfs, self._live.cgroup(namespace, container.id))
            # A terminal asked for by the request or by the spec: runc and conmon must agree.
            terminal = body.terminal or bool(config["process"].get("terminal"))
            config["process"]["terminal"] = terminal
            context = CreateContext(
                namespace, container, runtime, layout, config, stdio=Stdio(stdin=body.stdin, terminal=terminal)
            )
            await run_steps(self._create_steps, context, undo)
            assert context.started is not None
            started = context.started
            task = await self._store.add(namespace, container.id, started.pid, started.conmon_pid, runtime.name)
            self._exits.watch(namespace, container.id, "", started)  # before any await: wait() relies on it
            undo.pop_all()
        for done in context.on_success:
            done()
        return task

    async def _await_previous(self, namespace: str, task_id: str) -> None:
        """Raise CONFLICT if the container has a live task; if its last task has exited but is
        still being torn down, wait for that (a client that saw the exit may start anew)."""
        previous = await self._store.get_or_none(namespace, task_id)
        if previous is None:
            return
        live = self._live.get(namespace, task_id)
        deleted = live.deleted if live else None
        if not previous.exited or deleted is None:
            raise has_task(task_id)
        async with asyncio.timeout(DELETE_TIMEOUT_SECONDS):
            await asyncio.shield(deleted)

    async def start(self, namespace: str, task_id: str) -> Task:
        """Appends /tasks/start. Raises CONFLICT unless the task is created (not yet started).
        A task the runtime started although its row was not updated (a crash or a failed
        write in between) is recorded as started and returned."""
        async with self._live.lock(namespace, task_id):
            record = await self._live_record(namespace, task_id)
            if record.task.status is not TaskStatus.CREATED:
                raise CargoholdError(ErrorKind.CONFLICT, f'task "{task_id}" is {record.task.status.value}; '
                                     "only a created task can be started")
            runtime = self._runtime(record.task.runtime)
            try:
                await runtime.start(runtime_id(namespace, task_id))
            except CargoholdError:
                status = await runtime.status(runtime_id(namespace, task_id))
                if status not in RECONCILED:
                    raise
                return await reconcile(self._store, record, status)
            return await self._store.set_status(
                namespace, task_id, TaskStatus.RUNNING, Topic.TASK_START,
                {"container_id": task_id, "pid": record.task.pid},
            )

    async def kill(self, namespace: str, task_id: str, request: KillRequest) -> None:
        number = parse_signal(request.signal)
        record = await self._live_record(namespace, task_id)
        await self._runtime(record.task.runtime).kill(runtime_id(namespace, task_id), number, request.all)

    async def pause(self, namespace: str, task_id: str) -> Task:
        """Freeze a running task. Appends /tasks/paused. Raises CONFLICT unless the runtime
        reports it running (see `_in_runtime_state`)."""
        async with self._live.lock(namespace, task_id):
            runtime, rid = await self._in_runtime_state(namespace, task_id, "running", "paused")
            await runtime.pause(rid)
            return await self._record_or_undo(
                namespace, task_id, TaskStatus.PAUSED, Topic.TASK_PAUSED, runtime, runtime.resume
            )

    async def resume(self, namespace: str, task_id: str) -> Task:
        """Thaw a paused task. Appends /tasks/resumed. Raises CONFLICT unless the runtime
        reports it paused (see `_in_runtime_state`)."""
        async with self._live.lock(namespace, task_id):
            runtime, rid = await self._in_runtime_state(namespace, task_id, "paused", "resumed")
            await runtime.resume(rid)
            return await self._record_or_undo(
                namespace, task_id, TaskStatus.RUNNING, Topic.TASK_RESUMED, runtime, runtime.pause
            )

    async def _in_runtime_state(
        self, namespace: str, task_id: str, wanted: str, verb: str
    ) -> tuple[OCIRuntime, str]:
        """The task's runtime and runtime id, if the runtime (not the row) reports it in
        state `wanted`; the row is corrected first (with its event) if it disagrees.
        Raises CONFLICT otherwise, NOT_FOUND for a missing task. Call under the task's lock."""
        record = await self._live_record(namespace, task_id)
        runtime = self._runtime(record.task.runtime)
        rid = runtime_id(namespace, task_id)
        actual = await runtime.status(rid)
        if actual in RECONCILED:
            await reconcile(self._store, record, actual)
        if actual != wanted:
            now = "exited" if actual in (None, "stopped") else actual
            raise CargoholdError(ErrorKind.CONFLICT, f'task "{task_id}" is {now}; only a {wanted} task can be {verb}')
        return runtime, rid

    async def _record_or_undo(
        self, namespace: str, task_id: str, status: TaskStatus, topic: Topic, runtime: OCIRuntime,
        undo: Callable[[str], Awaitable[None]],
    ) -> Task:
        """Record the runtime's change in the row; if that fails, undo the change so that
        the two still agree."""
        try:
            return await self._store.set_status(namespace, task_id, status, topic, {"container_id": task_id})
        except BaseException:
            log.warning("recording %s/%s as %s failed: undoing it in %s", namespace, task_id, status.value,
                        runtime.name)
            with suppress(CargoholdError):
                await asyncio.shield(undo(runtime_id(namespace, task_id)))
            raise

    async def pids(self, namespace: str, task_id: str) -> list[int]:
        record = await self._live_record(namespace, task_id)
        return await self._runtime(record.task.runtime).pids(runtime_id(namespace, task_id))

    async def update(self, namespace: str, task_id: str, resources: LinuxResources) -> Task:
        """Live cgroup update through the runtime. Raises VALIDATION with its message."""
        record = await self._live_record(namespace, task_id)
        document = resources.model_dump(mode="json", exclude_none=True)
        if not document:
            raise invalid("resources is empty: give memory, cpu or pids")
        await self._runtime(record.task.runtime).update(runtime_id(namespace, task_id), document)
        return record.task

    async def get(self, namespace: str, task_id: str) -> Task:
        return (await self._live_record(namespace, task_id)).task

    async def find(self, namespace: str) -> list[Task]:
        """The namespace's live tasks (`find` lists, in every service)."""
        return await self._store.list_in(namespace)

    async def count_by_status(self) -> dict[str, int]:
        """Live tasks of every namespace by status (for `cargohold_tasks`)."""
        return await self._store.count_by_status()

    async def wait(self, namespace: str, task_id: str, exec_id: str | None = None) -> Exit:
        """The exit of the task (or exec process): waits while it runs, else answers from the
        stored exits. Raises NOT_FOUND when there is neither. A task's wait answers once it
        is also deleted (exit means delete), so the container can be deleted right after."""
        pending = self._live.pending(namespace, task_id, exec_id or "")
        if pending is None and exec_id:
            # A start in progress watches the process before it lets go of its lock: an exec
            # attached to before its start may end (its output over) before it is watched.
            async with self._live.lock(namespace, task_id, exec_id):
                pending = self._live.pending(namespace, task_id, exec_id)
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
        record = await self._live_record(namespace, task_id)
        live = self._live.get(namespace, task_id)
        deleted = live.deleted if live else None
        if deleted is None:
            raise task_not_found(namespace, task_id)
        runtime = self._runtime(record.task.runtime)
        rid = runtime_id(namespace, task_id)
        # The cgroup's freezer, not the row: a frozen process cannot die, so a task the
        # runtime has paused is thawed after the kill (the signal waits for it) whatever
        # the row says.
        paused = frozen(self._live.cgroup(namespace, task_id))
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
        path = self._dirs.task(namespace, task_id).process(exec_id or "").log
        if not path.exists() and not self._watched(namespace, task_id, exec_id or ""):
            await self._containers.get(namespace, task_id)  # NOT_FOUND for an unknown container
            what = f'exec process "{exec_id}" of task "{task_id}"' if exec_id else f'task "{task_id}"'
            raise CargoholdError(ErrorKind.NOT_FOUND, f"no log for {what}: it has not run")

        async def running() -> bool:
            return self._watched(namespace, task_id, exec_id or "")

        return read_log(
            path, tail=tail, since=since, follow=running if follow else None, max_line_bytes=max_line_bytes
        )

    # --- exec ------------------------------------------------------------------------

    async def add_exec(self, namespace: str, task_id: str, body: ExecCreate) -> Process:
        record = await self._live_record(namespace, task_id)
        if record.task.status is not TaskStatus.RUNNING:
            raise CargoholdError(ErrorKind.CONFLICT, f'task "{task_id}" is {record.task.status.value}; '
                                 "exec needs a running task")
        spec = body.process.model_dump(mode="json", exclude_unset=True)
        spec = with_defaults({"process": spec})["process"]
        await self._policy.check_process(namespace, spec)
        # Under the task's lock, which its teardown takes: the exec's dir is never made
        # again in a task dir being removed.
        async with self._live.lock(namespace, task_id):
            await self._live_record(namespace, task_id)
            added = await self._store.add_process(namespace, task_id, body.exec_id, spec)
            # Read back by start_exec (and attach): the OCI process has no field for stdin.
            stdio = Stdio(stdin=body.stdin, terminal=bool(spec.get("terminal")))
            await asyncio.to_thread(write_stdio, self._dirs.task(namespace, task_id).exec(body.exec_id), stdio)
        return added

    async def start_exec(self, namespace: str, task_id: str, exec_id: str) -> Process:
        """Run the added exec process, once: concurrent starts are serialized and all but
        the first answer CONFLICT. Appends /tasks/exec-started."""
        async with self._live.lock(namespace, task_id, exec_id) as live:
            record = await self._live_record(namespace, task_id)
            process = await self._store.get_process(namespace, task_id, exec_id)
            if process.process.status != "created":
                raise CargoholdError(ErrorKind.CONFLICT, f'exec process "{exec_id}" was started already')
            await self._policy.check_process(namespace, process.spec)  # the label may be gone since
            layout = self._dirs.task(namespace, task_id)
            files, spec_path = layout.exec(exec_id), layout.exec_spec(exec_id)
            await asyncio.to_thread(_write_json, spec_path, process.spec)
            staged = live.staged.pop(exec_id, None)
            if staged is not None:  # attached to already: its conmon waits for this
                try:
                    started = await staged.start()
                except BaseException:
                    staged.cancel()
                    raise
            else:
                stdio = Stdio(stdin=read_stdio(files).stdin, terminal=bool(process.spec.get("terminal")))
                started = await self._require_conmon().exec(
                    runtime_id(namespace, task_id), exec_id, spec_path, self._runtime(record.task.runtime), files,
                    stdio,
                )
            self._live.keep_pidfd(live, exec_id, started)
            try:
                result = await self._store.start_process(namespace, task_id, exec_id, started.pid, started.conmon_pid)
            except BaseException:
                # Unrecorded, it would run again at the next start: it must not run now (nor
                # be taken by recovery for a start that happened: its pid file goes).
                self._live.signal_exec(namespace, task_id, exec_id, signal.SIGKILL)
                self._live.forget_pidfd(live, exec_id)
                files.pid_file.unlink(missing_ok=True)
                raise
            self._exits.watch(namespace, task_id, exec_id, started)
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
        if not self._live.signal_exec(namespace, task_id, exec_id, number):
            raise CargoholdError(ErrorKind.CONFLICT, f'exec process "{exec_id}" has exited')

    # --- attach ----------------------------------------------------------------------

    async def attachable(self, namespace: str, task_id: str, exec_id: str = "") -> tuple[ProcessFiles, Stdio]:
        """The files (attach socket, control fifo) and stdio of a live task's init (exec id
        "") or exec process. An exec process not started yet is staged (`_stage_exec`): its
        conmon is up, so an attach before the start misses none of its output. Raises
        NOT_FOUND when unknown, CONFLICT when it has exited."""
        what = f'exec process "{exec_id}" of task "{task_id}"' if exec_id else f'task "{task_id}"'
        try:
            await self._live_record(namespace, task_id)
            process = await self._store.get_process(namespace, task_id, exec_id) if exec_id else None
        except CargoholdError as error:
            if error.kind is ErrorKind.NOT_FOUND and await self._store.last_exit(namespace, task_id, exec_id):
                raise CargoholdError(ErrorKind.CONFLICT, f"{what} has exited") from None
            raise
        if process is not None and process.process.pid is None:
            await self._stage_exec(namespace, task_id, exec_id)
        live = self._live.get(namespace, task_id)
        staged = live is not None and exec_id in live.staged
        if not staged and not self._watched(namespace, task_id, exec_id):  # conmon has gone: exit being recorded
            raise CargoholdError(ErrorKind.CONFLICT, f"{what} has exited")
        files = self._dirs.task(namespace, task_id).process(exec_id)
        return files, await asyncio.to_thread(read_stdio, files)

    async def _stage_exec(self, namespace: str, task_id: str, exec_id: str) -> None:
        """Start the conmon of an exec process not started yet, the process itself waiting
        for `start_exec` (conmon's --exec-attach). Once: a started or staged one is left."""
        async with self._live.lock(namespace, task_id, exec_id) as live:
            record = await self._live_record(namespace, task_id)
            process = await self._store.get_process(namespace, task_id, exec_id)
            if process.process.status != "created" or exec_id in live.staged:
                return
            layout = self._dirs.task(namespace, task_id)
            files = layout.exec(exec_id)
            stdio = Stdio(stdin=read_stdio(files).stdin, terminal=bool(process.spec.get("terminal")))
            # The spec is written at the start (the runtime reads it then): conmon only names it.
            staged = await self._require_conmon().stage_exec(
                runtime_id(namespace, task_id), exec_id, layout.exec_spec(exec_id), self._runtime(record.task.runtime),
                files, stdio,
            )
            try:
                await self._live_record(namespace, task_id)  # its task ended meanwhile: finish cancelled none
            except BaseException:
                staged.cancel()
                raise
            live.staged[exec_id] = staged

    async def metrics(self, namespace: str, task_id: str) -> TaskMetrics:
        """The monitor's latest figures (read now if it has none yet). Raises NOT_FOUND."""
        await self._live_record(namespace, task_id)
        figures = self._monitor.latest(namespace, task_id) or await self._monitor.read_now(namespace, task_id)
        if figures is None:
            raise CargoholdError(ErrorKind.NOT_FOUND, f'task "{task_id}" has no cgroup figures (it is exiting)')
        return TaskMetrics(
            container_id=task_id, namespace=namespace, read_at=figures.read_at, **dataclasses.asdict(figures.stats)
        )

    async def recover(self) -> None:
        """Re-adopt, collect and clean up after a restart (see `recovery.py`)."""
        await self._recovery.recover()

    async def close(self) -> None:
        """Stop watching (the tasks keep running; the next daemon re-adopts them). This
        daemon's cgroup parent goes if no task is left under it (rmdir fails while one is)."""
        self._live.close()
        await self._exits.close()
        parent = self._live.cgroup_parent
        async with self._live.cgroup_lock:
            await asyncio.to_thread(remove_cgroup, parent, parent)

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

    def _watched(self, namespace: str, task_id: str, exec_id: str) -> bool:
        live = self._live.get(namespace, task_id)
        return live is not None and exec_id in live.watches

    async def _live_record(self, namespace: str, task_id: str) -> TaskRecord:
        """The task, unless it is missing or already exiting (both NOT_FOUND)."""
        if self._conmon is None:
            self._require_conmon()
        record = await self._store.get(namespace, task_id)
        if record.exited:
            raise task_not_found(namespace, task_id)
        return record


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
