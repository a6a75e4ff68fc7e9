"""Many requests at once over a real unix socket: every create lands, each has exactly one
event, ids stay strictly increasing, a subscriber sees them all in order; racing creates of
one id make exactly one winner."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from app.config import Settings
from tests.api.events import (
    assert_increasing,
    check_frame,
    history,
    sse,
)
from tests.conftest import container_body, uds_client

pytestmark = pytest.mark.anyio

COUNT = 200


@pytest.fixture
async def wide_client(settings: Settings, uds_server: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real server that may open a connection per request."""
    limits = httpx.Limits(max_connections=COUNT + 10, max_keepalive_connections=COUNT + 10)
    async with uds_client(settings, timeout=30, limits=limits) as client:
        yield client


async def test_parallel_creates_all_land_with_one_event_each(
    wide_client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
) -> None:
    ids = [f"c{n:03}" for n in range(COUNT)]
    async with sse(wide_client) as stream:
        async with asyncio.timeout(10):
            responses = await asyncio.gather(
                *(wide_client.post("/containers", json=container_body(i), headers=ns_headers) for i in ids)
            )
        frames = await stream.events(COUNT + 1, within=10)

    assert Counter(r.status_code for r in responses) == {201: COUNT}, [
        r.text for r in responses if r.status_code != 201
    ]
    listed = await wide_client.get("/containers", headers=ns_headers)
    assert [c["id"] for c in listed.json()["containers"]] == ids

    stored = await history(wide_client)
    assert [(e["topic"], e["namespace"]) for e in stored[:1]] == [("/namespaces/create", namespace)]
    creates = [e for e in stored if e["topic"] == "/containers/create"]
    assert len(stored) == COUNT + 1
    assert sorted(e["event"]["id"] for e in creates) == ids, "one create event per container, no other"
    assert_increasing([e["id"] for e in stored])

    received = [check_frame(f) for f in frames]
    assert_increasing([e["id"] for e in received])
    assert received == stored, "the subscriber got every event, in id order"


async def test_parallel_creates_of_one_id_make_one_winner(
    wide_client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
) -> None:
    racers = 50
    async with asyncio.timeout(10):
        responses = await asyncio.gather(
            *(
                wide_client.post(
                    "/containers", json=container_body("web", labels={"racer": str(n)}), headers=ns_headers
                )
                for n in range(racers)
            )
        )
    assert Counter(r.status_code for r in responses) == {201: 1, 409: racers - 1}
    for response in responses:
        if response.status_code == 409:
            assert response.headers["content-type"] == "application/problem+json"
    (winner,) = [r.json() for r in responses if r.status_code == 201]

    got = await wide_client.get("/containers/web", headers=ns_headers)
    assert got.json()["labels"] == winner["labels"], "the stored container is the winner's"
    stored = await history(wide_client)
    assert [(e["topic"], e["event"].get("id", e["event"].get("name"))) for e in stored] == [
        ("/namespaces/create", namespace),
        ("/containers/create", "web"),
    ]
    assert stored[1]["event"]["labels"] == winner["labels"]
