"""Fixtures for the client tests: one real daemon (`cargohold serve`, a subprocess, on a unix
socket and on 127.0.0.1 TCP with a bearer token) and one registry holding busybox per test
module, and `cargohold` itself run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api.served import free_port
from tests.conftest import BASE_URL, stop_process
from tests.images.conftest import REPOSITORY, Registry, oci_layout, running_registry
from tests.runtime.conftest import require_runtime
from tests.runtime.daemon import CARGOHOLD, DaemonProcess, scrub

__all__ = ["oci_layout"]  # a fixture, re-exported for this folder's tests

READY_SECONDS = 30.0
TOKEN = "a-client-token-of-32-characters!"  # the TCP listener's (at least 16 characters)


@dataclass(frozen=True)
class Daemon:
    """A running `cargohold serve`, the busybox reference its registry serves, and its TCP
    listener (127.0.0.1:`tcp_port`, bearer token TOKEN)."""

    process: DaemonProcess
    image: str
    tcp_port: int

    @property
    def host(self) -> str:
        return f"unix://{self.process.socket}"

    def cli(self, *args: str, input: str | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`cargohold ARGS` against this daemon (stdin: `input`, or nothing), its output captured."""
        return subprocess.run([str(CARGOHOLD), *args], capture_output=True, text=True, timeout=timeout,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL,
                              env={**os.environ, "CARGOHOLD_HOST": self.host, **(env or {})})


@pytest.fixture(scope="module")
def client_registry(tmp_path_factory: pytest.TempPathFactory, oci_layout: Path) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("client-registry")) as started:
        started.push_layout(oci_layout, "latest")
        yield started


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, client_registry: Registry) -> Iterator[Daemon]:
    """One daemon for the module (a daemon start costs a second or two)."""
    require_runtime()
    process = DaemonProcess(tmp_path_factory.mktemp("client-daemon"))
    process.base.mkdir(parents=True, exist_ok=True)
    token_file = process.base / "token"
    token_file.write_text(TOKEN + "\n")
    tcp_port = free_port()
    with open(process.log, "wb") as log:
        popen = subprocess.Popen(
            [str(CARGOHOLD), "serve", "--root", str(process.root), "--state", str(process.state),
             "--listen", f"unix://{process.socket}", "--listen", f"tcp://127.0.0.1:{tcp_port}",
             "--token-file", str(token_file), "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_SECONDS
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(process.socket)), base_url=BASE_URL) as http:
            while True:
                if popen.poll() is not None:
                    raise AssertionError(f"the daemon exited with {popen.returncode}:\n{process.logs()}")
                # Not before the socket is there: a failed connect leaks its socket (httpx on uds).
                if process.socket.exists():
                    try:
                        if http.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"the daemon did not answer within {READY_SECONDS} s:\n{process.logs()}")
                time.sleep(0.05)
        yield Daemon(process, f"{client_registry.host}/{REPOSITORY}:latest", tcp_port)
    finally:
        stop_process(popen, 20)
        scrub(process)
