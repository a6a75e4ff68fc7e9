"""`cargohold serve` as a real process: started on a unix socket (and a free TCP port) in
a temp dir, waited for until it answers, always stopped. Not a test module: test
modules import it, never each other."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BASE_URL, free_port, wait_for

MAIN = Path(__file__).resolve().parents[2]
CARGOHOLD = (str(Path(sys.executable).with_name("cargohold")),)


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    root: Path
    state: Path
    sock: Path
    port: int | None
    log: Path

    def unix(self, **kwargs: Any) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=str(self.sock))
        return httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=10, **kwargs)

    def tcp(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", headers=headers, timeout=10)

    async def wait_exit(self, within: float) -> int:
        async with asyncio.timeout(within):
            return await self.process.wait()


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM by pid, then SIGKILL if it is still there after 5 s."""
    if process.returncode is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(5):
            await process.wait()
    except TimeoutError:
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()


@asynccontextmanager
async def serving(
    tmp_path: Path, *options: str, command: tuple[str, ...] = CARGOHOLD, tcp: bool = True, log: str = "daemon"
) -> AsyncIterator[Daemon]:
    """`cargohold serve` on <tmp>/state/cargohold.sock (and a free TCP port), always stopped."""
    root, state = tmp_path / "root", tmp_path / "state"
    sock = state / "cargohold.sock"
    port = free_port() if tcp else None
    argv = [*command, "serve", "--root", str(root), "--state", str(state), "--listen", f"unix://{sock}"]
    if port is not None:
        argv += ["--listen", f"tcp://127.0.0.1:{port}"]
    log_path = tmp_path / f"{log}.log"
    with log_path.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            *argv, *options, "--log-level", "warning", stdout=output, stderr=output, cwd=MAIN
        )
    daemon = Daemon(process, root, state, sock, port, log_path)
    try:
        await wait_until_serving(daemon)
        yield daemon
    finally:
        await stop(process)


async def wait_until_serving(daemon: Daemon, within: float = 10.0) -> None:
    async def answers() -> bool:
        if daemon.process.returncode is not None:
            pytest.fail(f"daemon exited with {daemon.process.returncode}:\n{daemon.log.read_text()}")
        if not daemon.sock.exists():
            return False
        try:
            async with daemon.unix() as client:
                return (await client.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_for(answers, "the daemon answers /healthz", within, every=0.05)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
