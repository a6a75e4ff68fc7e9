"""Task, exec process and exit rows.

A task row exists from the moment its runtime container is created until its teardown
has finished: `exited = 1` marks one whose exit is recorded but whose teardown has not
completed (a crash in between is finished by recovery). Exit rows outlive their task so
that `wait` answers after the fact; they are pruned by count and age per namespace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..errors import CargoholdError, ErrorKind, not_found
from ..models import Exit, Process, Task, TaskStatus
from ..topics import Topic
from .db import Database, Row, Tx, dumps, utcnow
from .namespaces import require_namespace

# Exits are pruned (by age and count) at every PRUNE_EVERY-th exit recorded.
PRUNE_EVERY = 100

_PROCESS_WHERE = "SELECT * FROM processes WHERE namespace = ? AND task_id = ? AND exec_id = ?"
_TASK_EXISTS = "SELECT 1 FROM tasks WHERE namespace = ? AND id = ?"


def has_task(container_id: str) -> CargoholdError:
    """CONFLICT, the one refusal of what a container's task forbids: a second task,
    deleting the container."""
    return CargoholdError(ErrorKind.CONFLICT, f'container "{container_id}" already has a task; delete the task first')


def refuse_task_in(tx: Tx, namespace: str, container_id: str) -> None:
    """Raise CONFLICT (`has_task`) if the container has a task, read inside the write `tx`."""
    if tx.exists(_TASK_EXISTS, namespace, container_id):
        raise has_task(container_id)


@dataclass(frozen=True)
class TaskRecord:
    task: Task
    conmon_pid: int
    exited: bool
    # OOM kills of this task already published as /tasks/oom.
    oom_kills: int = 0


@dataclass(frozen=True)
class ProcessRecord:
    namespace: str
    task_id: str
    process: Process
    conmon_pid: int | None
    spec: dict[str, Any]


def task_not_found(namespace: str, task_id: str) -> CargoholdError:
    return not_found(f'no task for container "{task_id}" in namespace "{namespace}"')


def _process(row: Row) -> ProcessRecord:
    return ProcessRecord(
        namespace=row["namespace"],
        task_id=row["task_id"],
        process=Process(
            exec_id=row["exec_id"], pid=row["pid"], status=row["status"],
            created_at=datetime.fromisoformat(row["created_at"]),
        ),
        conmon_pid=row["conmon_pid"],
        spec=json.loads(row["spec"]),
    )


def _exit(row: Row) -> Exit:
    return Exit(
        id=row["id"],
        exec_id=row["exec_id"] or None,
        pid=row["pid"],
        exit_status=row["exit_status"],
        exited_at=datetime.fromisoformat(row["exited_at"]),
        oom_killed=bool(row["oom_killed"]),
    )


class TaskStore:
    def __init__(self, db: Database, exit_retention: int, exit_max_age: timedelta) -> None:
        self._db = db
        self._exit_retention = exit_retention
        self._exit_max_age = exit_max_age

    async def add(self, namespace: str, task_id: str, pid: int, conmon_pid: int, runtime: str) -> Task:
        """Record a created task; appends /tasks/create. Raises CONFLICT if one exists."""
        async with self._db.write() as tx:
            refuse_task_in(tx, namespace, task_id)
            tx.execute(
                "INSERT INTO tasks (namespace, id, pid, conmon_pid, status, runtime, created_at)"
                " VALUES (?, ?, ?, ?, 'created', ?, ?)",
                namespace, task_id, pid, conmon_pid, runtime, utcnow().isoformat(),
            )
            tx.append_event(namespace, Topic.TASK_CREATE, {"container_id": task_id, "pid": pid})
            return self._get_in(tx, namespace, task_id).task

    async def get_or_none(self, namespace: str, task_id: str) -> TaskRecord | None:
        """`get`, with None for a missing task (`find` is for lists, everywhere)."""
        try:
            return await self.get(namespace, task_id)
        except CargoholdError:
            return None

    async def exists(self, namespace: str, task_id: str) -> bool:
        return await self._db.one(_TASK_EXISTS, namespace, task_id) is not None

    async def refuse_task(self, namespace: str, container_id: str) -> None:
        """Raise CONFLICT (`has_task`) if the container has a task (a read outside any write)."""
        if await self.exists(namespace, container_id):
            raise has_task(container_id)

    async def get(self, namespace: str, task_id: str) -> TaskRecord:
        row = await self._db.one("SELECT * FROM tasks WHERE namespace = ? AND id = ?", namespace, task_id)
        if row is None:
            raise task_not_found(namespace, task_id)
        processes = await self._db.all(
            "SELECT * FROM processes WHERE namespace = ? AND task_id = ? ORDER BY created_at", namespace, task_id
        )
        return self._task(row, processes)

    async def list_in(self, namespace: str) -> list[Task]:
        """Raises NOT_FOUND for an unknown namespace."""
        # An exited task is on its way out (teardown running): it is no longer listed.
        rows = await self._db.all("SELECT * FROM tasks WHERE namespace = ? AND exited = 0 ORDER BY id", namespace)
        if not rows:
            await require_namespace(self._db, namespace)
        processes = await self._db.all("SELECT * FROM processes WHERE namespace = ? ORDER BY created_at", namespace)
        return [self._task(row, [p for p in processes if p["task_id"] == row["id"]]).task for row in rows]

    async def list_records(self) -> list[TaskRecord]:
        """Every task of every namespace (for recovery at start-up)."""
        rows = await self._db.all("SELECT * FROM tasks ORDER BY namespace, id")
        processes = await self._db.all("SELECT * FROM processes")
        return [
            self._task(row, [p for p in processes if (p["namespace"], p["task_id"]) == (row["namespace"], row["id"])])
            for row in rows
        ]

    async def count_by_status(self) -> dict[str, int]:
        rows = await self._db.all("SELECT status, count(*) AS n FROM tasks WHERE exited = 0 GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    async def set_status(
        self, namespace: str, task_id: str, status: TaskStatus, topic: Topic, payload: dict[str, Any]
    ) -> Task:
        """Record a state change the runtime has made; appends `topic`."""
        async with self._db.write() as tx:
            # started_at is set by the first move to running (a resume keeps it).
            changed = tx.execute(
                "UPDATE tasks SET status = ?, started_at = CASE WHEN ? = 'running'"
                " THEN coalesce(started_at, ?) ELSE started_at END WHERE namespace = ? AND id = ?",
                status.value, status.value, utcnow().isoformat(), namespace, task_id,
            )
            if not changed:
                raise task_not_found(namespace, task_id)
            tx.append_event(namespace, topic, payload)
            return self._get_in(tx, namespace, task_id).task

    async def add_process(self, namespace: str, task_id: str, exec_id: str, spec: dict[str, Any]) -> Process:
        """Record an exec process (not started); appends /tasks/exec-added. CONFLICT if the id is taken."""
        async with self._db.write() as tx:
            self._get_in(tx, namespace, task_id)
            if tx.exists(_PROCESS_WHERE.replace("*", "1"), namespace, task_id, exec_id):
                raise CargoholdError(
                    ErrorKind.CONFLICT, f'task "{task_id}" already has an exec process "{exec_id}"'
                )
            tx.execute(
                "INSERT INTO processes (namespace, task_id, exec_id, status, spec, created_at)"
                " VALUES (?, ?, ?, 'created', ?, ?)",
                namespace, task_id, exec_id, dumps(spec), utcnow().isoformat(),
            )
            tx.append_event(namespace, Topic.TASK_EXEC_ADDED, {"container_id": task_id, "exec_id": exec_id})
            row = tx.one(_PROCESS_WHERE, namespace, task_id, exec_id)
            assert row is not None
            return _process(row).process

    async def get_process(self, namespace: str, task_id: str, exec_id: str) -> ProcessRecord:
        row = await self._db.one(
            _PROCESS_WHERE, namespace, task_id, exec_id
        )
        if row is None:
            if not await self.exists(namespace, task_id):
                raise task_not_found(namespace, task_id)
            raise not_found(f'task "{task_id}" has no exec process "{exec_id}"')
        return _process(row)

    async def start_process(
        self, namespace: str, task_id: str, exec_id: str, pid: int, conmon_pid: int
    ) -> Process:
        """Record a started exec process; appends /tasks/exec-started."""
        async with self._db.write() as tx:
            tx.execute(
                "UPDATE processes SET pid = ?, conmon_pid = ?, status = 'running'"
                " WHERE namespace = ? AND task_id = ? AND exec_id = ?",
                pid, conmon_pid, namespace, task_id, exec_id,
            )
            tx.append_event(
                namespace, Topic.TASK_EXEC_STARTED, {"container_id": task_id, "exec_id": exec_id, "pid": pid}
            )
            row = tx.one(_PROCESS_WHERE, namespace, task_id, exec_id)
            assert row is not None
            return _process(row).process

    async def record_exit(self, namespace: str, exit_: Exit) -> Exit:
        """Keep the exit and append /tasks/exit; returns it as kept. For the init process the
        task is marked exited (teardown pending); an exec process's row goes. Idempotent: a
        second exit for a process already recorded does nothing (recovery may see one twice).
        `exited_at` is never before the task's start (or the process's creation): conmon's
        exit file has the kernel's coarse mtime, taken before the daemon notes the start."""
        async with self._db.write() as tx:
            if exit_.exec_id is None:
                row = tx.one(
                    "SELECT created_at, started_at FROM tasks WHERE namespace = ? AND id = ?", namespace, exit_.id
                )
            else:
                row = tx.one("SELECT created_at, NULL AS started_at" + _PROCESS_WHERE.removeprefix("SELECT *"),
                             namespace, exit_.id, exit_.exec_id)
            if row is not None:
                floor = datetime.fromisoformat(row["started_at"] or row["created_at"])
                if exit_.exited_at < floor:
                    exit_ = exit_.model_copy(update={"exited_at": floor})
            if exit_.exec_id is None:
                marked = tx.execute(
                    "UPDATE tasks SET exited = 1 WHERE namespace = ? AND id = ? AND exited = 0", namespace, exit_.id
                )
                if not marked:
                    return exit_
            else:
                changed = tx.execute(
                    "DELETE FROM processes WHERE namespace = ? AND task_id = ? AND exec_id = ?",
                    namespace, exit_.id, exit_.exec_id,
                )
                if not changed:
                    return exit_
            seq = tx.insert(
                "INSERT INTO exits (namespace, id, exec_id, pid, exit_status, exited_at, oom_killed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                namespace, exit_.id, exit_.exec_id or "", exit_.pid, exit_.exit_status,
                exit_.exited_at.isoformat(), int(exit_.oom_killed),
            )
            tx.append_event(namespace, Topic.TASK_EXIT, {
                "container_id": exit_.id, "id": exit_.exec_id or exit_.id, "pid": exit_.pid,
                "exit_status": exit_.exit_status, "exited_at": exit_.exited_at.isoformat(),
                "oom_killed": exit_.oom_killed,
            })
            # Pruning scans the namespace's exits: do it in steps, not on every exit (the
            # bounds are approximate by design, as for events).
            if seq % PRUNE_EVERY == 0:
                self._prune_exits(tx, namespace)
            return exit_

    async def record_oom(self, namespace: str, task_id: str, oom_kills: int, payload: dict[str, Any]) -> None:
        """Note that the task's first `oom_kills` OOM kills are published and append
        /tasks/oom, together: a restart neither repeats nor loses one."""
        async with self._db.write() as tx:
            tx.execute("UPDATE tasks SET oom_kills = max(oom_kills, ?) WHERE namespace = ? AND id = ?",
                       oom_kills, namespace, task_id)
            tx.append_event(namespace, Topic.TASK_OOM, payload)

    async def delete(self, namespace: str, task_id: str, exit_: Exit) -> None:
        """Remove the task row (its teardown is done); appends /tasks/delete."""
        async with self._db.write() as tx:
            changed = tx.execute("DELETE FROM tasks WHERE namespace = ? AND id = ?", namespace, task_id)
            if changed:
                tx.append_event(namespace, Topic.TASK_DELETE, {
                    "container_id": task_id, "pid": exit_.pid, "exit_status": exit_.exit_status,
                    "exited_at": exit_.exited_at.isoformat(),
                })

    async def last_exit(self, namespace: str, task_id: str, exec_id: str | None = None) -> Exit | None:
        row = await self._db.one(
            "SELECT * FROM exits WHERE namespace = ? AND id = ? AND exec_id = ? ORDER BY seq DESC LIMIT 1",
            namespace, task_id, exec_id or "",
        )
        return _exit(row) if row is not None else None

    def _prune_exits(self, tx: Tx, namespace: str) -> None:
        oldest = (utcnow() - self._exit_max_age).isoformat()
        tx.execute("DELETE FROM exits WHERE namespace = ? AND exited_at < ?", namespace, oldest)
        tx.execute(
            "DELETE FROM exits WHERE namespace = ? AND seq <= ("
            " SELECT seq FROM exits WHERE namespace = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            namespace, namespace, self._exit_retention,
        )

    def _get_in(self, tx: Tx, namespace: str, task_id: str) -> TaskRecord:
        row = tx.one("SELECT * FROM tasks WHERE namespace = ? AND id = ?", namespace, task_id)
        if row is None:
            raise task_not_found(namespace, task_id)
        processes = tx.all(
            "SELECT * FROM processes WHERE namespace = ? AND task_id = ? ORDER BY created_at", namespace, task_id
        )
        return self._task(row, processes)

    @staticmethod
    def _task(row: Row, processes: list[Row]) -> TaskRecord:
        return TaskRecord(
            task=Task(
                id=row["id"],
                namespace=row["namespace"],
                pid=row["pid"],
                status=TaskStatus(row["status"]),
                runtime=row["runtime"],
                created_at=datetime.fromisoformat(row["created_at"]),
                started_at=datetime.fromisoformat(row["started_at"]) if row["started_at"] else None,
                processes=[_process(p).process for p in processes],
            ),
            conmon_pid=row["conmon_pid"],
            exited=bool(row["exited"]),
            oom_kills=row["oom_kills"],
        )
