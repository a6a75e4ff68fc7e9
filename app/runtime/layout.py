"""Where a task's files live on disk, spelled in this one place.

`<state>/tasks/<namespace>/<id>/` holds the bundle (`bundle/config.json`, `bundle/rootfs`)
and, for the init process in the task dir itself and for each exec process in
`execs/<exec id>/`, conmon's files: `pid` (the runtime writes the process's pid),
`conmon.pid`, `exit/` (one file, the exit status), `persist/` (conmon's `oom` marker) and
`stdio.json` (whether it has stdin, a terminal). conmon's attach socket `attach` and its
control fifo `ctl` are in the dir conmon is given as its bundle (`--full-attach`): the
bundle for the init, the exec's own dir for an exec. The init process logs to `<root>/logs` (see `TaskLogs`), an exec
process to `log` in its own dir. Nothing here creates or removes a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .logs import TaskLogs


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None when it is missing or unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessFiles:
    """conmon's files for one process (a task's init or one exec): in `work_dir`, but the
    attach socket and control fifo, in `bundle_dir` (conmon's `-b`; `work_dir` if None)."""

    work_dir: Path
    log: Path
    bundle_dir: Path | None = None

    @property
    def pid_file(self) -> Path:
        return self.work_dir / "pid"

    @property
    def conmon_pid_file(self) -> Path:
        return self.work_dir / "conmon.pid"

    @property
    def exit_dir(self) -> Path:
        return self.work_dir / "exit"

    @property
    def persist_dir(self) -> Path:
        return self.work_dir / "persist"

    @property
    def socket_dir(self) -> Path:
        return self.work_dir

    @property
    def attach_dir(self) -> Path:
        """Where conmon binds `attach` (a SOCK_SEQPACKET socket) and makes the `ctl` fifo."""
        return self.bundle_dir or self.work_dir

    @property
    def attach_socket(self) -> Path:
        return self.attach_dir / "attach"

    @property
    def ctl_fifo(self) -> Path:
        return self.attach_dir / "ctl"

    @property
    def stdio_file(self) -> Path:
        return self.work_dir / "stdio.json"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def conmon_pid(self) -> int | None:
        return read_pid(self.conmon_pid_file)


@dataclass(frozen=True)
class TaskLayout:
    """One task's dir and everything in it."""

    dir: Path
    init_log: Path

    @property
    def bundle(self) -> Path:
        return self.dir / "bundle"

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"

    @property
    def config(self) -> Path:
        return self.bundle / "config.json"

    @property
    def init(self) -> ProcessFiles:
        return ProcessFiles(self.dir, self.init_log, self.bundle)

    def exec(self, exec_id: str) -> ProcessFiles:
        work_dir = self.dir / "execs" / exec_id
        return ProcessFiles(work_dir, work_dir / "log")

    def exec_spec(self, exec_id: str) -> Path:
        """The OCI process document conmon hands the runtime's exec."""
        return self.exec(exec_id).work_dir / "process.json"

    def process(self, exec_id: str) -> ProcessFiles:
        """The init process's files for exec id "", else the exec process's."""
        return self.exec(exec_id) if exec_id else self.init

    def conmon_pid_files(self) -> Iterator[Path]:
        """The init's and every exec's `conmon.pid` (for killing a stray conmon)."""
        yield self.init.conmon_pid_file
        for work_dir in sorted((self.dir / "execs").glob("*")):
            yield ProcessFiles(work_dir, work_dir / "log").conmon_pid_file


@dataclass(frozen=True)
class TaskDirs:
    """The root of every task dir (`<state>/tasks`); init logs are `logs`' to place."""

    tasks: Path
    logs: TaskLogs

    def task(self, namespace: str, task_id: str) -> TaskLayout:
        return TaskLayout(self.tasks / namespace / task_id, self.logs.path(namespace, task_id))

    def on_disk(self) -> Iterator[tuple[str, str]]:
        """(namespace, id) of every task dir there is, owned or not."""
        if not self.tasks.is_dir():
            return
        for namespace_dir in self.tasks.iterdir():
            for task_dir in namespace_dir.iterdir():
                yield namespace_dir.name, task_dir.name

    def namespace_dirs(self) -> list[Path]:
        return list(self.tasks.iterdir()) if self.tasks.is_dir() else []
