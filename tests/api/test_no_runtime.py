"""Without runc, crun or conmon installed, task endpoints answer 503 naming the missing
binary, and the metadata API keeps working."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.conftest import container_body, in_process_client

pytestmark = pytest.mark.anyio


@pytest.fixture
async def bare_client(settings: Settings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    empty = tmp_path / "no-binaries"
    empty.mkdir()
    async with in_process_client(replace(settings, runtime_path=str(empty))) as client:
        yield client


async def test_version_reports_missing_runtimes(bare_client: httpx.AsyncClient) -> None:
    version = (await bare_client.get("/version")).json()
    assert version["runtimes"] == {"runc": None, "crun": None, "conmon": None}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/tasks", {"container_id": "web"}, id="create"),
        pytest.param("GET", "/tasks/web", None, id="get"),
        pytest.param("POST", "/tasks/web/start", None, id="start"),
        pytest.param("POST", "/tasks/web/kill", {"signal": "SIGTERM"}, id="kill"),
        pytest.param("GET", "/tasks/web/pids", None, id="pids"),
        pytest.param("DELETE", "/tasks/web", None, id="delete"),
    ],
)
async def test_task_endpoints_answer_503_naming_the_binary(
    bare_client: httpx.AsyncClient, ns_headers: dict[str, str], method: str, path: str, body: object
) -> None:
    created = await bare_client.post("/containers", json=container_body("web"), headers=ns_headers)
    assert created.status_code == 201
    response = await bare_client.request(method, path, json=body, headers=ns_headers)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    detail = response.json()["detail"]
    assert "conmon is not installed" in detail or "runc is not installed" in detail, detail
    assert "apt-get install" in detail


async def test_metadata_api_keeps_working(bare_client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
    assert (await bare_client.post("/containers", json=container_body("a"), headers=ns_headers)).status_code == 201
    listed = (await bare_client.get("/containers", headers=ns_headers)).json()["containers"]
    assert [c["id"] for c in listed] == ["a"]
    patched = await bare_client.patch("/containers/a", json={"labels": {"x": "y"}}, headers=ns_headers)
    assert patched.status_code == 200 and patched.json()["labels"] == {"x": "y"}, patched.text
    assert (await bare_client.delete("/containers/a", headers=ns_headers)).status_code == 204
    assert (await bare_client.get("/containers", headers=ns_headers)).json()["containers"] == []
    tasks = await bare_client.get("/tasks", headers=ns_headers)
    assert tasks.status_code == 200 and tasks.json()["tasks"] == [], tasks.text
