"""conmon, one per task or exec process: it runs `runc create` (or `runc exec`), keeps
the container's stdio in a CRI-format log, and writes the exit status to a file named
after the container in its exit dir. It outlives the daemon, which is how tasks survive
a restart.

conmon daemonizes before the runtime has finished; as Podman does, we pass it the write
end of a pipe in `_OCI_SYNCPIPE` and read one JSON line: `{"data": pid}` once created,
or `{"data": -1, "message": "..."}` with the runtime's error. Its exit is watched
through a pidfd on the conmon process (readable when it exits), which works as well for
a conmon started by an earlier daemon.

Every conmon binds an attach socket and a control fifo in its bundle dir (see
`layout.ProcessFiles.attach_dir`); a process with stdin gets `-i`, one on a terminal
`-t` (conmon hands the runtime a console socket and keeps the terminal). With both,
`--leave-stdin-open`: the terminal is conmon's only handle on the pty, which closing
stdin when an attached client goes would lose for every later attach.

An exec process can be staged (`stage_exec`), as Podman's `exec` with attach: conmon
starts with `--exec-attach` and two more pipes, says on `_OCI_ATTACHPIPE` once its attach
socket is bound, and runs the runtime only when `_OCI_STARTPIPE` is written (its first
read, before it daemonizes, is written at once). A client attached in between misses
nothing of the output. A write end closed unwritten (the daemon gone) also starts it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, overload

from ..errors import CargoholdError, ErrorKind
from .layout import ProcessFiles
from .oci import OCIRuntime

SYNC_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Stdio:
    """What a process's stdio is: stdin kept open for attach, a pseudo-terminal."""

    stdin: bool = False
    terminal: bool = False


NO_STDIO = Stdio()


def write_stdio(files: ProcessFiles, stdio: Stdio) -> None:
    """Record `stdio` beside the process's files: attach reads it, also after a restart."""
    files.work_dir.mkdir(parents=True, exist_ok=True)
    files.stdio_file.write_text(json.dumps({"stdin": stdio.stdin, "terminal": stdio.terminal}))


def read_stdio(files: ProcessFiles) -> Stdio:
    """The process's recorded stdio; none (a process from before terminals) if unrecorded."""
    try:
        document = json.loads(files.stdio_file.read_text())
        return Stdio(stdin=document.get("stdin") is True, terminal=document.get("terminal") is True)
    except (OSError, ValueError, AttributeError):
        return NO_STDIO


@dataclass(frozen=True)
class Started:
    conmon_pid: int
    pid: int


class StagedExec:
    """An exec process's conmon, up with its attach socket; the process runs at `start`.
    Owns the start pipe's write end, the sync pipe's read end and a pidfd on conmon; one
    of `start` or `cancel` releases them."""

    def __init__(self, conmon_pid: int, start_fd: int, sync_fd: int, runtime_name: str) -> None:
        self.conmon_pid = conmon_pid
        self._start_fd = start_fd
        self._sync_fd = sync_fd
        self._runtime_name = runtime_name
        try:
            self._pidfd: int | None = os.pidfd_open(conmon_pid)
        except OSError:
            self._pidfd = None  # gone already: start reads its sync pipe's end

    async def start(self) -> Started:
        """Run the process. Raises VALIDATION with the runtime's message."""
        try:
            try:
                os.write(self._start_fd, b"0")
            except OSError:
                pass  # conmon is gone: its sync pipe says so
            os.close(self._start_fd)
            self._start_fd = -1
            line = await asyncio.wait_for(asyncio.to_thread(_read_line, self._sync_fd), SYNC_TIMEOUT_SECONDS)
        finally:
            self._release()
        pid, message = _parse_sync(line)
        if pid <= 0:
            raise CargoholdError(ErrorKind.VALIDATION, f"{self._runtime_name} could not run it: {message}")
        return Started(conmon_pid=self.conmon_pid, pid=pid)

    def cancel(self) -> None:
        """The process never runs: conmon is killed (its runtime child dies with it, PDEATHSIG)."""
        if self._pidfd is not None:
            with suppress(OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        self._release()

    def _release(self) -> None:
        for fd in (self._start_fd, self._sync_fd, self._pidfd if self._pidfd is not None else -1):
            if fd >= 0:
                with suppress(OSError):
                    os.close(fd)
        self._start_fd = self._sync_fd = -1
        self._pidfd = None


class Conmon:
    def __init__(self, binary: str, log_max_bytes: int) -> None:
        self.binary = binary
        self._log_max_bytes = log_max_bytes

    async def create(
        self, container_id: str, bundle: Path, runtime: OCIRuntime, files: ProcessFiles, stdio: Stdio = NO_STDIO
    ) -> Started:
        """Create the container (not started). Raises VALIDATION with the runtime's message."""
        return await self._launch(
            container_id, runtime, files, ["-b", str(bundle), "-u", container_id, "-n", container_id], stdio,
        )

    async def exec(
        self, container_id: str, exec_id: str, process_spec: Path, runtime: OCIRuntime, files: ProcessFiles,
        stdio: Stdio = NO_STDIO,
    ) -> Started:
        """Start an exec process in the running container `container_id`."""
        return await self._launch(container_id, runtime, files, _exec_args(container_id, exec_id, process_spec, files),
                                  stdio)

    async def stage_exec(
        self, container_id: str, exec_id: str, process_spec: Path, runtime: OCIRuntime, files: ProcessFiles,
        stdio: Stdio = NO_STDIO,
    ) -> StagedExec:
        """As `exec`, but the process waits for `StagedExec.start`: attach to it first."""
        return await self._launch(container_id, runtime, files, _exec_args(container_id, exec_id, process_spec, files),
                                  stdio, staged=True)

    @overload
    async def _launch(self, container_id: str, runtime: OCIRuntime, files: ProcessFiles, extra: list[str],
                      stdio: Stdio, staged: Literal[False] = False) -> Started: ...

    @overload
    async def _launch(self, container_id: str, runtime: OCIRuntime, files: ProcessFiles, extra: list[str],
                      stdio: Stdio, staged: Literal[True]) -> StagedExec: ...

    async def _launch(
        self, container_id: str, runtime: OCIRuntime, files: ProcessFiles, extra: list[str], stdio: Stdio,
        staged: bool = False,
    ) -> Started | StagedExec:
        write_stdio(files, stdio)
        if stdio.terminal:
            extra = [*extra, "-t"]
        if stdio.stdin:
            extra = [*extra, "-i", *(["--leave-stdin-open"] if stdio.terminal else [])]
        files.exit_dir.mkdir(parents=True, exist_ok=True)
        files.persist_dir.mkdir(exist_ok=True)
        files.log.parent.mkdir(parents=True, exist_ok=True)
        read_end, write_end = os.pipe()
        env = {**os.environ, "_OCI_SYNCPIPE": str(write_end)}
        passed = [write_end]
        start_read = start_write = attach_read = attach_write = -1
        if staged:
            start_read, start_write = os.pipe()
            attach_read, attach_write = os.pipe()
            extra = [*extra, "--exec-attach"]
            passed += [start_read, attach_write]
            env |= {"_OCI_STARTPIPE": str(start_read), "_OCI_ATTACHPIPE": str(attach_write)}
            os.write(start_write, b"0")  # the first read, before it daemonizes: nothing to set up first
        handed_over = False
        try:
            process = await asyncio.create_subprocess_exec(
                self.binary, "--api-version", "1", "-c", container_id, *extra,
                "-r", runtime.binary, "--runtime-arg", runtime.root_arg,
                "-p", str(files.pid_file), "-P", str(files.conmon_pid_file),
                "--exit-dir", str(files.exit_dir),
                "-l", f"k8s-file:{files.log}", "--log-size-max", str(self._log_max_bytes),
                "--socket-dir-path", str(files.socket_dir), "--full-attach", "--log-level", "error",
                # conmon drops an `oom` marker in its persist dir (else its cwd) on an OOM kill.
                "--persist-dir", str(files.persist_dir),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, pass_fds=passed, cwd=files.work_dir, env=env,
            )
        finally:
            for fd in (write_end, start_read, attach_write):
                if fd >= 0:
                    os.close(fd)
        try:
            _, err = await process.communicate()  # the parent exits once conmon has daemonized
            if process.returncode != 0:
                raise CargoholdError(
                    ErrorKind.UNAVAILABLE, f"conmon failed to start: {err.decode(errors='replace').strip()}"
                )
            if staged:
                try:
                    ready = await asyncio.wait_for(asyncio.to_thread(_read_line, attach_read), SYNC_TIMEOUT_SECONDS)
                    status, message = _parse_sync(ready)
                    if status != 0:
                        raise CargoholdError(ErrorKind.UNAVAILABLE,
                                             f"conmon did not set up the attach socket: {message}")
                    conmon_pid = int(files.conmon_pid_file.read_text().strip())
                except BaseException:
                    # Before the start pipe closes below: closed unwritten, it would run the process.
                    _kill_conmon(files, container_id)
                    raise
                handed_over = True
                return StagedExec(conmon_pid, start_write, read_end, runtime.name)
            line = await asyncio.wait_for(asyncio.to_thread(_read_line, read_end), SYNC_TIMEOUT_SECONDS)
        finally:
            for fd in (attach_read, *(() if handed_over else (read_end, start_write))):
                if fd >= 0:
                    os.close(fd)
        pid, message = _parse_sync(line)
        if pid <= 0:
            raise CargoholdError(ErrorKind.VALIDATION, f"{runtime.name} could not run it: {message}")
        conmon_pid = int(files.conmon_pid_file.read_text().strip())
        return Started(conmon_pid=conmon_pid, pid=pid)


def _exec_args(container_id: str, exec_id: str, process_spec: Path, files: ProcessFiles) -> list[str]:
    """conmon's arguments for an exec process of `container_id` (its own name and work dir)."""
    name = f"{container_id}-{exec_id}"
    return ["-e", "--exec-process-spec", str(process_spec), "-u", name, "-n", name, "-b", str(files.work_dir)]


def _kill_conmon(files: ProcessFiles, container_id: str) -> None:
    """SIGKILL the conmon of `files`, if its pid file names a live one of `container_id`."""
    with suppress(OSError, ValueError):
        pid = int(files.conmon_pid_file.read_text().strip())
        if conmon_alive(pid, container_id):
            os.kill(pid, signal.SIGKILL)


def _read_line(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _parse_sync(line: bytes) -> tuple[int, str]:
    if not line.strip():
        return -1, "conmon exited without reporting the container's pid"
    try:
        message = json.loads(line)
    except ValueError:
        return -1, f"conmon said {line!r}"
    pid = message.get("data", message.get("pid", -1))
    return int(pid), str(message.get("message", "")).strip() or "no message"


def read_exit_status(exit_dir: Path) -> tuple[int, datetime] | None:
    """The status conmon wrote in `exit_dir` (exit code, or 128 + signal) and when, or None."""
    try:
        entries = list(exit_dir.iterdir())
    except FileNotFoundError:
        return None
    for entry in entries:
        try:
            return int(entry.read_text().strip()), datetime.fromtimestamp(entry.stat().st_mtime, UTC)
        except (OSError, ValueError):
            continue
    return None


def conmon_alive(conmon_pid: int, container_id: str) -> bool:
    """Whether `conmon_pid` is still the conmon of `container_id` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{conmon_pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"conmon") and container_id.encode() in cmdline


def open_child_pidfd(pid: int, conmon_pid: int) -> int | None:
    """A pidfd on process `pid` if it is the one conmon `conmon_pid` supervises (conmon is
    the subreaper of what the runtime started, so its parent), else None. Signals sent
    through a pidfd reach the process it was opened on or none: never one that reused the
    pid after it ended."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        # Opened before the look and still there after it: what was read was this process.
        signal.pidfd_send_signal(fd, 0)
    except (OSError, ValueError, IndexError):
        parent = None
    if parent != conmon_pid:
        os.close(fd)
        return None
    return fd


class ExitWatch:
    """Calls `on_exit` once, from the event loop, when process `pid` ends (pidfd); at once
    if it has ended already (or `pid` is 0: known to be gone)."""

    def __init__(self, pid: int, on_exit: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_exit = on_exit
        self._fd: int | None = None
        try:
            if pid <= 0:
                raise ProcessLookupError(pid)
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._loop.call_soon(self._fire)
            return
        self._loop.add_reader(self._fd, self._fire)

    def _fire(self) -> None:
        self.close()
        self._on_exit()

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
