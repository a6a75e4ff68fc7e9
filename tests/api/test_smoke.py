"""The app answers in-process and over a real unix socket."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import container_body

pytestmark = pytest.mark.anyio


async def test_create_then_get_in_process(client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
    created = await client.post("/containers", json=container_body("web"), headers=ns_headers)
    assert created.status_code == 201, created.text
    got = await client.get("/containers/web", headers=ns_headers)
    assert got.json()["id"] == "web"
    assert got.headers["etag"] == created.headers["etag"]


async def test_healthz_over_unix_socket(live_client: httpx.AsyncClient) -> None:
    response = await live_client.get("/healthz")
    assert response.json() == {"status": "ok"}
