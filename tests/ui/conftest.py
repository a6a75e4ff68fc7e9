"""Fixtures for the web view's tests: one real daemon (`cargohold serve`, a subprocess, on a
unix socket and on 127.0.0.1 TCP with a bearer token, its monitor polling every 0.25 s), one
registry holding busybox, and one headless Chromium (Debian's `chromium`, driven by
playwright through `executable_path`: playwright's own browsers are never downloaded), per
module. Without chromium these tests skip on a developer machine and FAIL under CI=true.

Screenshots of the main views go to $CARGOHOLD_UI_SCREENSHOTS, by default
`test-artifacts/ui/` at the top of the checkout (git-ignored), for a person to look at.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.conftest import free_port, stop_process
from tests.images.conftest import REPOSITORY, Registry, oci_layout, running_registry
from tests.runtime.conftest import require_runtime
from tests.runtime.daemon import CARGOHOLD, DaemonProcess, scrub

__all__ = ["oci_layout"]  # a fixture, re-exported for this folder's tests

CHROMIUM = "/usr/bin/chromium"
TOKEN = "a-web-view-token-of-32-characters"
PULLED_REPOSITORY = "ui/pulled"  # pulled from the page (the rest use REPOSITORY, pulled by the fixture)
SCREENSHOTS = Path(os.environ.get("CARGOHOLD_UI_SCREENSHOTS") or Path(__file__).parents[2] / "test-artifacts" / "ui")


def require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the web view's tests cannot run: no {CHROMIUM}; CI must install chromium (make test-packages)")
    pytest.skip(f"the web view's tests need Debian's chromium at {CHROMIUM}")


@dataclass(frozen=True)
class Daemon:
    """A running `cargohold serve`: its unix socket, its TCP listener (token TOKEN), an API
    client over TCP, the busybox image it has pulled, and the registry to pull more from."""

    process: DaemonProcess
    tcp_port: int
    api: httpx.Client
    image: str
    registry: Registry

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.tcp_port}"

    @property
    def socket(self) -> Path:
        return self.process.socket

    def container(self, container_id: str, args: list[str], **fields: Any) -> dict[str, Any]:
        created = self.api.post("/containers", json={"id": container_id, "image": self.image,
                                                     "process": {"args": args}, **fields})
        assert created.status_code == 201, created.text
        result: dict[str, Any] = created.json()
        return result

    def run(self, container_id: str, args: list[str], memory: int | None = None, **fields: Any) -> None:
        """A container on busybox with a started task (`memory`: its limit in bytes)."""
        self.container(container_id, args, **fields)
        assert self.api.post("/tasks", json={"container_id": container_id}).status_code == 201
        if memory is not None:
            patched = self.api.patch(f"/tasks/{container_id}", json={"resources": {"memory": {"limit": memory}}})
            assert patched.status_code == 200, patched.text
        assert self.api.post(f"/tasks/{container_id}/start").status_code == 200

    def status(self, container_id: str) -> str | None:
        """The task's status, None when it has none."""
        got = self.api.get(f"/tasks/{container_id}")
        if got.status_code == 404:
            return None
        assert got.status_code == 200, got.text
        status: str = got.json()["status"]
        return status


@pytest.fixture(scope="module")
def ui_registry(tmp_path_factory: pytest.TempPathFactory, oci_layout: Path) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("ui-registry")) as started:
        started.push_layout(oci_layout, "latest")
        started.push_layout(oci_layout, "latest", PULLED_REPOSITORY)
        yield started


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, ui_registry: Registry) -> Iterator[Daemon]:
    """One daemon for the module, busybox pulled; afterwards its tasks are deleted (and
    whatever a failed test left is scrubbed)."""
    require_runtime()
    require_chromium()
    process = DaemonProcess(tmp_path_factory.mktemp("ui-daemon"))
    process.base.mkdir(parents=True, exist_ok=True)
    token_file = process.base / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    tcp_port = free_port()
    with open(process.log, "wb") as log:
        popen = subprocess.Popen(
            [str(CARGOHOLD), "serve", "--root", str(process.root), "--state", str(process.state),
             "--listen", f"unix://{process.socket}", "--listen", f"tcp://127.0.0.1:{tcp_port}",
             "--token-file", str(token_file), "--monitor-interval", "0.25", "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = httpx.Client(base_url=f"http://127.0.0.1:{tcp_port}", headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=60, trust_env=False)
    try:
        process.wait_serving(popen, api)
        image = f"{ui_registry.host}/{REPOSITORY}:latest"
        pulled = api.post("/images/pull", json={"reference": image, "plain_http": True})
        assert pulled.status_code in (200, 201), pulled.text  # 201 once it makes the image
        yield Daemon(process, tcp_port, api, image, ui_registry)
        tasks = api.get("/tasks").json()["tasks"]
        for task in tasks:
            api.delete(f"/tasks/{task['id']}")
    finally:
        api.close()
        stop_process(popen, 20)
        scrub(process)


@pytest.fixture(scope="module")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="module")
def browser(daemon: Daemon) -> Iterator[Browser]:
    """One headless Chromium for the module (its pages are made by the tests)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()

