"""bench/null_server.py, the HTTP floor of `make bench`: it must answer every request
with 200 and a JSON body of exactly the size asked for, or the floor rows would compare
the daemon against the wrong amount of work."""

from __future__ import annotations

import json

import httpx
import pytest

from bench.null_server import DEFAULT_BODY_BYTES, app

pytestmark = pytest.mark.anyio


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")


@pytest.mark.parametrize("size", [14, 344, 347_796])
async def test_the_body_is_the_size_asked_for(size: int) -> None:
    async with client() as http:
        response = await http.get("/containers/c1", headers={"Body-Bytes": str(size)})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert len(response.content) == size == int(response.headers["content-length"])
    assert set(json.loads(response.content)) == {"padding"}


async def test_any_method_and_path_without_the_header() -> None:
    async with client() as http:
        response = await http.post("/tasks", json={"container_id": "x" * 5000})
        deleted = await http.delete("/containers/w1-0")
    assert response.status_code == deleted.status_code == 200
    assert len(response.content) == len(deleted.content) == DEFAULT_BODY_BYTES
