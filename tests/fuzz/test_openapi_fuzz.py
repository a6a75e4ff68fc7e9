"""Schemathesis over the committed `openapi/openapi.json` against a live daemon.

A real `cargohold serve` (a subprocess, real runc and conmon, root and state in tmp_path)
listens on TCP with a bearer token and on a unix socket. Schemathesis sends every operation
of the description a bounded number of generated requests, valid and invalid, over TCP with
the token, and checks each answer: no 5xx, the body matches the documented schema, the status
code and the content type are documented. Operations that declare the bearer scheme are also
sent without a token and with a wrong one, and must answer 401.

Random identifiers mostly meet 404s, so a second run aims the task operations at a real
running task (busybox `sleep`) and its exec process most of the time: pause, resume, live
resource updates, exec start and kill, pids and logs then reach runc and the cgroups with
fuzzed input.

The settings (seed, examples per operation, checks) are in `schemathesis.toml` beside this
file, which also says how to run the same thing by hand. Afterwards the daemon is stopped by
its pid and must have left no task, conmon, runc state, cgroup or mount behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Listener, Settings
from tests.conftest import leftovers, wait_for_sync
from tests.rootfs import write_busybox_tar
from tests.runtime.conftest import require_runtime

REPO = Path(__file__).resolve().parents[2]
DESCRIPTION = REPO / "openapi" / "openapi.json"
CONFIG = Path(__file__).with_name("schemathesis.toml")
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# The run takes well under a minute here; past this, a request hangs.
RUN_TIMEOUT = 300.0
# Phases that must have sent requests to every operation (examples only run where the
# description has examples).
GENERATING_PHASES = ("coverage", "fuzzing")
# Left out in schemathesis.toml: a pull would reach registries beyond 127.0.0.1.
NOT_FUZZED = "^pull_image$"
# The task the second run aims at, in the default namespace (the header's default).
TASK_ID = "fuzz"
EXEC_ID = "fuzz-exec"
TASK_PATHS = "^/tasks"
# Waits long-poll until the process exits; deleting or killing the task (SIGKILL is among
# the first signals drawn) ends the run's target: the first run covers them.
TASK_OPERATIONS_SKIPPED = "^(wait_task|wait_task_process|delete_task|kill_task)$"
# Appended to schemathesis.toml for the second run: most generated identifiers are the
# live task's; logs are read, not followed (a followed log of `sleep` never ends).
AIM_AT_TASK = f"""
[dictionaries.task]
values = ["{TASK_ID}"]

[dictionaries.exec]
values = ["{EXEC_ID}"]

[parameters]
"path.container_id" = {{ dictionary = "task", probability = 0.8 }}
"body.container_id" = {{ dictionary = "task", probability = 0.8 }}
"path.exec_id" = {{ dictionary = "exec", probability = 0.8 }}
"query.follow" = false
"""

PUBLIC_OPERATIONS = frozenset({"GET /healthz"})
PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True)
class LiveDaemon:
    settings: Settings
    url: str
    token: str
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _wait_until_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    def healthy() -> bool:
        if process.poll() is not None:
            pytest.fail(f"cargohold serve exited with {process.returncode}:\n{_tail(log)}", pytrace=False)
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for_sync(healthy, "cargohold serve answers /healthz", START_TIMEOUT, every=0.1)
    except AssertionError as error:
        pytest.fail(f"{error}:\n{_tail(log)}", pytrace=False)


def _unix_client(settings: Settings) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(settings.state / "cargohold.sock"))
    return httpx.Client(transport=transport, base_url="http://cargohold", timeout=60)


def _every(client: httpx.Client, path: str, key: str, headers: dict[str, str] | None = None) -> list[Any]:
    """Every item of a list endpoint, page after page (the fuzzing makes many namespaces)."""
    items: list[Any] = []
    params: dict[str, str] = {}
    while True:
        response = client.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page[key]
        if not page.get("next_cursor"):
            return items
        params = {"after": page["next_cursor"]}


def _delete_tasks(settings: Settings) -> None:
    """Delete every task the fuzzing made, in every namespace, over the unix socket."""
    with _unix_client(settings) as client:
        for namespace in _every(client, "/namespaces", "namespaces"):
            headers = {"Cargohold-Namespace": namespace["name"]}
            for task in _every(client, "/tasks", "tasks", headers):
                deleted = client.delete(f"/tasks/{task['id']}", headers=headers)
                assert deleted.status_code in (200, 404), deleted.text


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"cargohold serve did not stop within {STOP_TIMEOUT}s of SIGTERM", pytrace=False)


@pytest.fixture
def live_daemon(tmp_path: Path) -> Iterator[LiveDaemon]:
    """`cargohold serve` on 127.0.0.1 (bearer token) and a unix socket; stopped by its pid,
    then checked for leftovers."""
    require_runtime()
    port = _free_port()
    state = tmp_path / "state"
    settings = Settings(
        root=tmp_path / "root",
        state=state,
        listeners=(Listener.parse(f"tcp://127.0.0.1:{port}"), Listener.parse(f"unix://{state / 'cargohold.sock'}")),
    )
    token = secrets.token_urlsafe(32)
    token_file = tmp_path / "token"
    token_file.touch(mode=0o600)
    token_file.write_text(token + "\n")
    log = tmp_path / "daemon.log"
    command = [sys.executable, "-m", "app", "serve", "--root", str(settings.root), "--state", str(state),
               "--token-file", str(token_file), "--log-level", "warning"]
    for listener in settings.listeners:
        command += ["--listen", listener.url]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(process, url, log)
        yield LiveDaemon(settings, url, token, log)
        _delete_tasks(settings)
    finally:
        _stop(process)
    # An error the answers did not show (a background task, a stream cut after its 200).
    assert "Traceback" not in log.read_text(errors="replace"), f"the daemon logged an error:\n{_tail(log, 80)}"
    left = leftovers(settings)
    assert left == {}, f"the fuzzing left these behind: {left}"


def _documented_operations(path_pattern: str = "", skipped_ids: str = "^$") -> set[str]:
    """`METHOD /path` of each operation in the description whose path matches `path_pattern`
    and whose operationId does not match `skipped_ids`."""
    description = json.loads(DESCRIPTION.read_text())
    return {
        f"{method.upper()} {path}"
        for path, item in description["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS and re.search(path_pattern, path)
        and not re.search(skipped_ids, operation["operationId"])
    }


def _tested_operations(report: Path) -> dict[str, set[str]]:
    """Per phase, the operations Schemathesis sent generated requests to (its NDJSON events)."""
    tested: dict[str, set[str]] = {}
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished is not None and finished["status"] != "skip":
            tested.setdefault(finished["phase"], set()).add(finished["recorder"]["label"])
    return tested


def _run_schemathesis(daemon: LiveDaemon, workdir: Path, config: Path, *options: str) -> tuple[str, Path]:
    """Run Schemathesis over the committed description against `daemon`; fail with its
    report (and the daemon's log) when it found anything. Returns its output and NDJSON events."""
    report = workdir / "schemathesis.ndjson"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", str(DESCRIPTION), "--url", daemon.url,
        "--report", "ndjson", "--report-ndjson-path", str(report), *options,
    ]
    environment = {**os.environ, "CARGOHOLD_TOKEN": daemon.token}
    try:
        # cwd: its cache and Hypothesis' directory go to tmp_path, not the checkout.
        completed = subprocess.run(
            command, cwd=workdir, env=environment, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"schemathesis did not finish within {RUN_TIMEOUT}s:\n{expired.stdout!r}", pytrace=False)
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        pytest.fail(
            f"schemathesis found problems (exit {completed.returncode}):\n{output}\n"
            f"--- the daemon's log ---\n{_tail(daemon.log)}",
            pytrace=False,
        )
    return output, report


def _assert_all_tested(output: str, report: Path, operations: set[str]) -> None:
    tested = _tested_operations(report)
    for phase in GENERATING_PHASES:
        missed = sorted(operations - tested.get(phase, set()))
        assert not missed, f"the {phase} phase sent nothing to {missed}:\n{output}"


@pytest.mark.runtime
def test_every_operation_survives_fuzzing(live_daemon: LiveDaemon, tmp_path: Path) -> None:
    output, report = _run_schemathesis(live_daemon, tmp_path, CONFIG)
    _assert_all_tested(output, report, _documented_operations(skipped_ids=NOT_FUZZED))


def _start_target_task(daemon: LiveDaemon, tmp_path: Path) -> None:
    """busybox `sleep` as task TASK_ID, running, with EXEC_ID added (not started)."""
    tar = write_busybox_tar(tmp_path / "busybox.tar")
    process = {"args": ["sleep", "3600"], "cwd": "/"}
    container = {
        "id": TASK_ID,
        "snapshot_key": f"{TASK_ID}-rootfs",
        "spec": {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": process},
    }
    with _unix_client(daemon.settings) as client:
        for response in (
            client.post("/snapshots/import", params={"name": "busybox"}, content=tar.read_bytes()),
            client.post("/snapshots", json={"key": f"{TASK_ID}-rootfs", "parent": "busybox"}),
            client.post("/containers", json=container),
            client.post("/tasks", json={"container_id": TASK_ID}),
            client.post(f"/tasks/{TASK_ID}/start"),
            client.post(f"/tasks/{TASK_ID}/processes", json={"exec_id": EXEC_ID, "process": process}),
        ):
            assert response.status_code in (200, 201), f"{response.request.url}: {response.text}"


@pytest.mark.runtime
def test_task_operations_survive_fuzzing_on_a_live_task(live_daemon: LiveDaemon, tmp_path: Path) -> None:
    _start_target_task(live_daemon, tmp_path)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.read_text() + AIM_AT_TASK)
    output, report = _run_schemathesis(
        live_daemon, tmp_path, config,
        "--include-path-regex", TASK_PATHS, "--exclude-operation-id-regex", TASK_OPERATIONS_SKIPPED,
    )
    aimed = _documented_operations(TASK_PATHS, TASK_OPERATIONS_SKIPPED)
    assert len(aimed) >= 10, f"the task operations are gone from the description? {sorted(aimed)}"
    _assert_all_tested(output, report, aimed)


# --- what the fuzzing relies on in the description (no daemon needed) ---------------------


def _operations() -> Iterator[tuple[str, dict[str, Any]]]:
    description = json.loads(DESCRIPTION.read_text())
    for path, item in description["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield f"{method.upper()} {path}", operation


def test_the_bearer_scheme_is_declared() -> None:
    schemes = json.loads(DESCRIPTION.read_text())["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http"
    assert schemes["bearer"]["scheme"] == "bearer"


def test_every_operation_but_healthz_needs_the_token_and_documents_401() -> None:
    wrong: list[str] = []
    for name, operation in _operations():
        if name in PUBLIC_OPERATIONS:
            if "security" in operation or "401" in operation["responses"]:
                wrong.append(f"{name} is public but documents the token")
            continue
        if operation.get("security") != [{"bearer": []}]:
            wrong.append(f"{name}: security is {operation.get('security')}, not bearer")
        unauthorized = operation["responses"].get("401", {})
        if PROBLEM_MEDIA_TYPE not in unauthorized.get("content", {}):
            wrong.append(f"{name}: no 401 problem response")
        elif "WWW-Authenticate" not in unauthorized.get("headers", {}):
            wrong.append(f"{name}: its 401 does not document WWW-Authenticate")
    assert not wrong, "\n".join(wrong)


def test_every_operation_with_a_body_documents_413() -> None:
    missing = [
        name for name, operation in _operations()
        if "requestBody" in operation
        and PROBLEM_MEDIA_TYPE not in operation["responses"].get("413", {}).get("content", {})
    ]
    assert not missing, f"operations taking a body without a 413 problem response: {missing}"


# --- what the fuzzing found -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/tasks/web/logs", "/tasks/web/processes/sh/logs"])
async def test_a_tail_beyond_the_largest_deque_is_refused_before_reading(client: httpx.AsyncClient, path: str) -> None:
    # It was accepted, and the log reader's deque(maxlen=tail) then failed with OverflowError
    # after the 200 had been sent: the client got a broken chunked body.
    response = await client.get(path, params={"tail": 2**63})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [error["field"] for error in response.json()["errors"]] == ["query.tail"]
