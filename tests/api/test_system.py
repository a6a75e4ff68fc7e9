"""The daemon itself: /healthz, /version, /metrics, problem+json for unknown routes and
large bodies, and `cargohold serve` as a real process (TCP bearer token, the unix socket's
mode, SIGTERM with a stream open and a request in flight, restart, `python -m app`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import __version__
from tests.api.served import (
    mode_of,
    serving,
)
from tests.conftest import container_body

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"
PYTHON_M_APP = (sys.executable, "-m", "app")
LIMIT = 1024 * 1024


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert {"type", "title", "status", "detail"} <= set(problem)
    assert problem["detail"]
    return problem


# --- In-process: health, version, metrics, unknown routes ----------------------------


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_version_reports_daemon_runtimes_cgroups_and_snapshotter(client: httpx.AsyncClient) -> None:
    response = await client.get("/version")
    assert response.status_code == 200
    info = response.json()
    assert info["version"] == __version__
    assert set(info["runtimes"]) == {"runc", "crun", "conmon"}
    for binary, version in info["runtimes"].items():
        if shutil.which(binary) is None:
            assert version is None, binary
        else:
            assert isinstance(version, str) and version, binary
    assert info["cgroup_mode"] in {"legacy", "hybrid", "unified"}
    assert info["snapshotter"] in {"overlayfs", "native"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/no-such-thing", 404, id="unknown-path"),
        pytest.param("GET", "/containers/web/nothing", 404, id="unknown-subpath"),
        pytest.param("DELETE", "/healthz", 405, id="delete-healthz"),
        pytest.param("POST", "/version", 405, id="post-version"),
        pytest.param("PUT", "/containers", 405, id="put-containers"),
    ],
)
async def test_unknown_route_and_wrong_method_are_problems(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    problem = assert_problem(await client.request(method, path), status)
    assert path in problem["detail"]
    if status == 405:
        assert method in problem["detail"]


async def test_metrics_has_the_instrumentators_http_requests_total(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await client.get("/healthz")).status_code == 200
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    key = ("http_requests_total", (("handler", "/healthz"), ("method", "GET"), ("status", "2xx")))
    assert samples.get(key) == 3, sorted(name for name, _ in samples)
    assert ("cargohold_sse_subscribers", ()) in samples


# --- Body limit over a real socket -----------------------------------------------------


def padded_body(size: int) -> bytes:
    """A valid container body, padded with spaces to exactly `size` bytes."""
    body = json.dumps(container_body("big")).encode()
    assert len(body) < size
    return body + b" " * (size - len(body))


async def in_chunks(body: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), chunk):
        yield body[start : start + chunk]


@pytest.mark.parametrize("chunked", [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")])
@pytest.mark.parametrize(
    ("size", "status"), [pytest.param(LIMIT, 201, id="at-limit"), pytest.param(LIMIT + 1, 413, id="over")]
)
async def test_body_limit(
    live_client: httpx.AsyncClient, ns_headers: dict[str, str], chunked: bool, size: int, status: int
) -> None:
    body = padded_body(size)
    headers = {**ns_headers, "Content-Type": "application/json"}
    async with asyncio.timeout(5):
        response = await live_client.post("/containers", content=in_chunks(body) if chunked else body, headers=headers)
        assert ("content-length" in response.request.headers) is not chunked
        listed = await live_client.get("/containers", headers=ns_headers)
    if status == 201:
        assert response.status_code == 201, response.text
        assert [c["id"] for c in listed.json()["containers"]] == ["big"]
    else:
        problem = assert_problem(response, 413)
        assert str(LIMIT) in problem["detail"]
        assert listed.status_code == 404, "nothing was created, not even the namespace"


# --- `cargohold serve` as a process --------------------------------------------------


NEEDS_TOKEN = [
    ("GET", "/version"),
    ("POST", "/containers"),
    ("GET", "/containers"),
    ("GET", "/events/history"),
    ("GET", "/namespaces"),
    ("GET", "/metrics"),
]


async def test_tcp_needs_the_bearer_token_and_the_unix_socket_does_not(tmp_path: Path) -> None:
    async with serving(tmp_path) as daemon:
        token_file = daemon.state / "token"
        assert token_file.exists(), "a token is generated into the state dir"
        assert mode_of(token_file) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert stat.S_ISSOCK(daemon.sock.stat().st_mode)
        assert mode_of(daemon.sock) == 0o660

        async with daemon.tcp() as anonymous, daemon.tcp("not-the-token") as wrong, daemon.tcp(token) as right:
            for method, path in NEEDS_TOKEN:
                body = container_body("web") if method == "POST" else None
                for client, detail in ((anonymous, "Authorization: Bearer"), (wrong, "wrong bearer token")):
                    response = await client.request(method, path, json=body)
                    problem = assert_problem(response, 401)
                    assert response.headers["www-authenticate"] == "Bearer", path
                    assert problem["type"] == "urn:cargohold:problem:unauthenticated"
                    assert detail in problem["detail"]
                assert (await right.request(method, path, json=body)).status_code in (200, 201), path
            async with asyncio.timeout(5), anonymous.stream("GET", "/events") as stream:
                assert stream.status_code == 401, "the SSE stream needs the token too"
            for client in (anonymous, wrong, right):
                assert (await client.get("/healthz")).json() == {"status": "ok"}
            listed = await right.get("/containers")
            assert [c["id"] for c in listed.json()["containers"]] == ["web"], "a refused POST created nothing"

        async with daemon.unix() as local:
            assert (await local.get("/version")).status_code == 200
            assert (await local.get("/metrics")).status_code == 200
            assert (await local.post("/containers", json=container_body("db"))).status_code == 201


async def test_bearer_scheme_is_case_insensitive(tmp_path: Path) -> None:
    """RFC 9110 11.1: the authentication scheme is a case-insensitive token."""
    async with serving(tmp_path) as daemon, daemon.tcp() as client:
        token = (daemon.state / "token").read_text().strip()
        response = await client.get("/version", headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200, response.text


async def test_metrics_public_opens_only_metrics(tmp_path: Path) -> None:
    async with serving(tmp_path, "--metrics-public") as daemon, daemon.tcp() as anonymous:
        metrics = await anonymous.get("/metrics")
        assert metrics.status_code == 200
        assert "cargohold_sse_subscribers" in metrics.text
        assert_problem(await anonymous.get("/version"), 401)


async def test_token_file_is_used_when_given(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-token-for-tests\n")
    async with serving(tmp_path, "--token-file", str(secret)) as daemon:
        async with daemon.tcp("s3cret-token-for-tests") as right, daemon.tcp() as anonymous:
            assert (await right.get("/version")).status_code == 200
            assert_problem(await anonymous.get("/version"), 401)
        assert not (daemon.state / "token").exists(), "no token is generated when --token-file is given"


async def test_python_m_app_serves(tmp_path: Path) -> None:
    async with serving(tmp_path, command=PYTHON_M_APP, tcp=False) as daemon, daemon.unix() as client:
        version = await client.get("/version")
        created = await client.post("/containers", json=container_body("web"))
    assert version.json()["version"] == __version__
    assert created.status_code == 201, created.text


async def test_sigterm_exits_cleanly_and_removes_the_socket(tmp_path: Path) -> None:
    async with serving(tmp_path, tcp=False) as daemon:
        os.kill(daemon.process.pid, signal.SIGTERM)
        code = await daemon.wait_exit(5)
        assert (code, daemon.sock.exists()) == (0, False), daemon.log.read_text()


async def test_sigterm_ends_streams_finishes_in_flight_requests_and_keeps_data(tmp_path: Path) -> None:
    async with serving(tmp_path, tcp=False) as daemon, daemon.unix() as client:
        assert (await client.post("/containers", json=container_body("before"))).status_code == 201

        # An SSE stream open and read until it ends.
        lines: list[str] = []

        async def follow() -> str:
            """How the stream ended: "complete", or the error that cut it."""
            try:
                async with client.stream("GET", "/events", params={"since": 0}) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        lines.append(line)
            except httpx.TransportError as error:
                return f"{type(error).__name__}: {error}"
            return "complete"

        # A request in flight: its body arrives in two halves, SIGTERM between them.
        body = json.dumps(container_body("inflight")).encode()
        first_half_sent, release = asyncio.Event(), asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield body[: len(body) // 2]
            first_half_sent.set()
            await release.wait()
            yield body[len(body) // 2 :]

        async with asyncio.timeout(10):
            following = asyncio.create_task(follow())
            posting = asyncio.create_task(
                client.post("/containers", content=slow_body(), headers={"Content-Type": "application/json"})
            )
            await first_half_sent.wait()
            await asyncio.sleep(0.2)  # the daemon has the request's head and first half
            os.kill(daemon.process.pid, signal.SIGTERM)
            await asyncio.sleep(0.3)  # the rest of the body arrives while the daemon shuts down
            release.set()
            posted = await posting
            stream_end = await asyncio.wait_for(following, 4)
            code = await daemon.wait_exit(5)
        socket_left = daemon.sock.exists()

    assert posted.status_code == 201, posted.text
    assert any(line.startswith("data:") for line in lines), "the stream sent the backlog before it ended"

    async with serving(tmp_path, tcp=False, log="restarted") as again, again.unix() as client:
        listed = await client.get("/containers")
    assert [c["id"] for c in listed.json()["containers"]] == ["before", "inflight"]
    assert code == 0, f"exit status {code} after SIGTERM"
    assert not socket_left, "the unix socket file is removed on shutdown"
    assert stream_end == "complete", f"the SSE response should end cleanly, not with {stream_end}"
