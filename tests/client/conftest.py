"""Fixtures for the client tests: one real daemon (`cargohold serve`, a subprocess, on a unix
socket and on 127.0.0.1 TCP over TLS, with a bearer token and client certificates required)
and one registry holding busybox per test module, and `cargohold` itself run as a subprocess."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import BASE_URL, free_port, stop_process
from tests.images.conftest import REPOSITORY, Registry, oci_layout, running_registry
from tests.pki import PKI, make_pki
from tests.runtime.conftest import require_runtime
from tests.runtime.daemon import CARGOHOLD, DaemonProcess, scrub

__all__ = ["oci_layout"]  # a fixture, re-exported for this folder's tests

TOKEN = "a-client-token-of-32-characters!"  # the TCP listener's (at least 16 characters)


@dataclass(frozen=True)
class Daemon:
    """A running `cargohold serve`, the busybox reference its registry serves, and its TCP
    listener (127.0.0.1:`tcp_port`, TLS with `pki`'s certificates, bearer token TOKEN)."""

    process: DaemonProcess
    image: str
    tcp_port: int
    pki: PKI

    @property
    def tls_env(self) -> dict[str, str]:
        """The client's environment for the TCP listener: its CA, a client certificate, the token."""
        return {"CARGOHOLD_TLS_CA": str(self.pki.ca), "CARGOHOLD_TLS_CERT": str(self.pki.client[0]),
                "CARGOHOLD_TLS_KEY": str(self.pki.client[1]), "CARGOHOLD_TOKEN": TOKEN}

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
    pki = make_pki(tmp_path_factory.mktemp("client-pki"))
    token_file = process.base / "token"
    token_file.write_text(TOKEN + "\n")
    tcp_port = free_port()
    with open(process.log, "wb") as log:
        popen = subprocess.Popen(
            [str(CARGOHOLD), "serve", "--root", str(process.root), "--state", str(process.state),
             "--listen", f"unix://{process.socket}", "--listen", f"tcp://127.0.0.1:{tcp_port}",
             "--token-file", str(token_file), "--log-level", "info",
             "--tls-cert", str(pki.server[0]), "--tls-key", str(pki.server[1]), "--tls-client-ca", str(pki.ca)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(process.socket)), base_url=BASE_URL) as http:
            process.wait_serving(popen, http)
        yield Daemon(process, f"{client_registry.host}/{REPOSITORY}:latest", tcp_port, pki)
    finally:
        stop_process(popen, 20)
        scrub(process)
