"""The daemon as a real subprocess (`cargohold serve`), for tests that stop it with SIGTERM
or kill it with SIGKILL and start it again on the same root (restart, reconcile). Not a
test module: test modules import it, never each other."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path

import httpx

from app.config import Settings
from app.runtime.cgroups import daemon_cgroup_parent
from app.snapshots.mounts import mount_points_under, unmount
from tests.conftest import BASE_URL, cgroups_below, conmon_pids_under, wait_for, wait_for_sync
from tests.runtime.conftest import require_runtime

CARGOHOLD = Path(sys.executable).parent / "cargohold"
READY_SECONDS = 30.0
STOP_SECONDS = 20.0


class DaemonProcess:
    """`cargohold serve` on `<state>/s.sock`, started and stopped (SIGTERM or SIGKILL) at will."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.socket = self.state / "s.sock"
        self.process: asyncio.subprocess.Process | None = None
        self.client: httpx.AsyncClient | None = None
        self.starts = 0
        # More `cargohold serve` flags, given at every start.
        self.args: list[str] = []

    @property
    def settings(self) -> Settings:
        return Settings(root=self.root, state=self.state, listeners=())

    @property
    def runc_root(self) -> Path:
        return self.state / "runtimes" / "runc"

    @property
    def log(self) -> Path:
        return self.base / f"daemon-{self.starts}.log"

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}"
            for path in sorted(self.base.glob("daemon-*.log"))
        )

    async def start(self) -> httpx.AsyncClient:
        assert self.process is None, "the daemon is running already"
        self.starts += 1
        with open(self.log, "wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(CARGOHOLD), "serve", "--root", str(self.root), "--state", str(self.state),
                "--listen", f"unix://{self.socket}", "--log-level", "info", *self.args,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)), base_url=BASE_URL, timeout=60
        )
        self.client = client

        async def answers() -> bool:
            assert self.process is not None
            if self.process.returncode is not None:
                raise AssertionError(f"the daemon exited with {self.process.returncode}:\n{self.logs()}")
            with suppress(httpx.TransportError):
                return (await client.get("/healthz")).status_code == 200
            return False

        try:
            await wait_for(answers, "the daemon answers /healthz", READY_SECONDS, every=0.05)
        except AssertionError as error:
            raise AssertionError(f"{error}:\n{self.logs()}") from None
        return client

    def wait_serving(self, popen: subprocess.Popen[bytes], http: httpx.Client) -> None:
        """Block until `popen`, this daemon started by a fixture of its own (with its
        listeners), answers `GET /healthz` through `http`; fail with its log if it exits
        first or takes longer than READY_SECONDS."""

        def answers() -> bool:
            if popen.poll() is not None:
                raise AssertionError(f"the daemon exited with {popen.returncode}:\n{self.logs()}")
            if not self.socket.exists():  # not before: a failed unix connect leaks its socket (httpx)
                return False
            try:
                return http.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for_sync(answers, f"the daemon answers /healthz; its log:\n{self.log}", READY_SECONDS)

    async def stop(self, how: signal.Signals) -> None:
        """SIGTERM (graceful: must exit 0) or SIGKILL (a crash)."""
        assert self.process is not None
        process, self.process = self.process, None
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        with suppress(ProcessLookupError):
            os.kill(process.pid, how)
        code = await asyncio.wait_for(process.wait(), STOP_SECONDS)
        if how is signal.SIGTERM:
            # uvicorn re-raises the SIGTERM it caught once it has shut down: -15 is a clean exit.
            assert code in (0, -signal.SIGTERM), f"SIGTERM: the daemon exited with {code}:\n{self.logs()}"
            # uvicorn's words for a finished shutdown (the lifespan's own, when uvicorn runs it).
            text = self.log.read_text()
            assert "Application shutdown complete" in text or "Finished server process" in text, self.logs()

    async def restart(self, how: signal.Signals) -> httpx.AsyncClient:
        await self.stop(how)
        return await self.start()

    async def kill_if_running(self) -> None:
        if self.process is not None:
            with suppress(Exception):
                await self.stop(signal.SIGKILL)


@asynccontextmanager
async def daemon_in(base: Path) -> AsyncIterator[DaemonProcess]:
    """A daemon process for one test; afterwards it is killed and its debris scrubbed."""
    require_runtime()
    daemon = DaemonProcess(base)
    try:
        yield daemon
    finally:
        await daemon.kill_if_running()
        scrub(daemon)


def scrub(daemon: DaemonProcess) -> None:
    """Remove by force whatever a (failed) test left: conmon, containers, cgroups, mounts;
    the test itself asserts `leftovers(...) == {}`, this only keeps the next test clean."""
    for pid in conmon_pids_under(daemon.state):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for container_id in runc_ids(daemon.runc_root):
        subprocess.run(["runc", f"--root={daemon.runc_root}", "delete", "--force", container_id],
                       capture_output=True, timeout=30, check=False)
    ours = sorted(cgroups_below(daemon_cgroup_parent(daemon.state)), key=lambda p: len(p.parts), reverse=True)
    for path in ours:
        with suppress(OSError):
            for member in (path / "cgroup.procs").read_text().split():
                with suppress(ProcessLookupError):
                    os.kill(int(member), signal.SIGKILL)
    for path in ours:
        # A cgroup is busy until the processes killed above have left it.
        with suppress(AssertionError):
            wait_for_sync(partial(_removed, path), f"cgroup {path} is removed", within=5, every=0.1)
    for point in mount_points_under(daemon.base):
        with suppress(OSError):
            unmount(point)


def _removed(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def runc_ids(runc_root: Path) -> list[str]:
    if not runc_root.is_dir():
        return []
    listed = subprocess.run(["runc", f"--root={runc_root}", "list", "--format", "json"],
                            capture_output=True, timeout=30, check=True)
    return [entry["id"] for entry in json.loads(listed.stdout or b"[]") or []]


def conmon_pid_of(daemon: DaemonProcess, namespace: str, task_id: str, exec_id: str | None = None) -> int:
    work_dir = daemon.state / "tasks" / namespace / task_id
    if exec_id:
        work_dir = work_dir / "execs" / exec_id
    return int((work_dir / "conmon.pid").read_text().strip())
