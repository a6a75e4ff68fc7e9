"""README "Limits", through the API: list pages (limit, cursor, Link), bounded event
payloads, byte-bounded event retention, the error event of a resume from a pruned id,
and the per-client cap on streams. (uvicorn's bounds: test_serving.py; followed log
lines: tests/runtime/test_log_bounds.py.)"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.events import EventBus, EventService, EventsLostError
from app.store.db import Database
from app.store.events import EventStore
from tests.api.events import (
    create,
    history,
    sse,
)
from tests.conftest import container_body, in_process_client, running_server, uds_client, wait_for

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"


# --- List pages --------------------------------------------------------------------


async def pages(
    client: httpx.AsyncClient, path: str, key: str, headers: dict[str, str], **params: Any
) -> list[list[str]]:
    """Follow `Link: rel="next"` from the first page; each page's names or ids."""
    found: list[list[str]] = []
    url: str | None = path
    first = True
    while url is not None:
        response = await client.get(url, headers=headers, params=params if first else None)
        first = False
        assert response.status_code == 200, response.text
        body = response.json()
        found.append([item.get("id") or item.get("name") or item["key"] for item in body[key]])
        link = response.headers.get("link")
        if body["next_cursor"] is None:
            assert link is None
            url = None
        else:
            assert link == f'<{path}?{httpx.QueryParams({**params, "after": body["next_cursor"]})}>; rel="next"'
            url = link[1:link.index(">")]
    return found


class TestListPages:
    async def test_containers_page_by_limit_and_cursor(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str]
    ) -> None:
        ids = [f"c{n:02d}" for n in range(7)]
        for n, container_id in enumerate(ids):
            labels = {"odd": str(n % 2)}
            body = container_body(container_id, labels=labels)
            assert (await client.post("/containers", json=body, headers=ns_headers)).status_code == 201
        assert await pages(client, "/containers", "containers", ns_headers, limit=3) == [ids[:3], ids[3:6], ids[6:]]
        assert await pages(client, "/containers", "containers", ns_headers) == [ids]  # default 1,000
        odd = await pages(client, "/containers", "containers", ns_headers, limit=2, filter="labels.odd==1")
        assert odd == [["c01", "c03"], ["c05"]]
        # Repeated filters (ORed) are kept in the next page's link.
        either = await pages(client, "/containers", "containers", ns_headers, limit=2, filter=["id==c00", "id==c06"])
        assert either == [["c00", "c06"]]
        either = await pages(client, "/containers", "containers", ns_headers, limit=1, filter=["id==c00", "id==c06"])
        assert either == [["c00"], ["c06"]]

    async def test_a_page_ends_early_at_the_byte_bound(self, settings: Settings, namespace: str) -> None:
        headers = {"Cargohold-Namespace": namespace}
        async with in_process_client(replace(settings, list_max_bytes=200_000)) as client:
            for n in range(5):
                labels = {f"k{i}": "x" * 4000 for i in range(25)}  # ~100 KB a container
                body = container_body(f"c{n}", labels=labels)
                assert (await client.post("/containers", json=body, headers=headers)).status_code == 201
            listed = await pages(client, "/containers", "containers", headers, limit=100)
        assert listed == [["c0", "c1"], ["c2", "c3"], ["c4"]]

    @pytest.mark.parametrize("path", ["/containers", "/namespaces", "/snapshots", "/tasks"])
    @pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "10001"}, {"limit": "x"}, {"after": "a" * 1025}])
    async def test_bad_page_parameters_are_422(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], path: str, query: dict[str, str]
    ) -> None:
        response = await client.get(path, params=query, headers=ns_headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["errors"][0]["field"] == f"query.{next(iter(query))}"

    async def test_namespaces_and_snapshots_page_too(self, client: httpx.AsyncClient, namespace: str) -> None:
        names = [f"{namespace}-{n}" for n in range(5)]
        for name in names:
            assert (await client.post("/namespaces", json={"name": name})).status_code == 201
        listed = [n for page in await pages(client, "/namespaces", "namespaces", {}, limit=2) for n in page]
        assert [n for n in listed if n.startswith(f"{namespace}-")] == names
        headers = {"Cargohold-Namespace": namespace}
        for n in range(3):
            response = await client.post("/snapshots", json={"key": f"s{n}"}, headers=headers)
            assert response.status_code == 201, response.text
        assert await pages(client, "/snapshots", "snapshots", headers, limit=2) == [["s0", "s1"], ["s2"]]
        # Tasks: none here, an empty last page.
        assert await pages(client, "/tasks", "tasks", headers, limit=2) == [[]]


# --- Event payloads and retention --------------------------------------------------


def stored_payloads(settings: Settings) -> list[tuple[int, int]]:
    """(id, payload bytes) of every stored event, read from the database file."""
    with sqlite3.connect(settings.database_path) as conn:
        rows = conn.execute("SELECT id, length(CAST(payload AS BLOB)) FROM events ORDER BY id").fetchall()
    return [(int(a), int(b)) for a, b in rows]


class TestEventPayloads:
    async def test_a_megabyte_of_labels_makes_a_bounded_event(
        self, client: httpx.AsyncClient, settings: Settings, namespace: str
    ) -> None:
        # 256 labels of ~4 KiB (DESIGN's maxima): a body just under 1 MiB.
        labels = {f"k{n:03d}": "v" * 3990 for n in range(256)}
        await create(client, namespace, "big", labels=labels)
        (event,) = [e for e in await history(client) if e["topic"] == "/containers/create"]
        payload = event["event"]
        assert len(json.dumps(payload, separators=(",", ":")).encode()) <= settings.event_max_payload_bytes
        assert payload["truncated"] == ["labels"]
        assert payload["id"] == "big" and payload["image"] == ""
        kept = list(payload["labels"])
        assert 10 < len(kept) < 17 and kept == sorted(labels)[: len(kept)]  # a prefix, in key order
        assert all(payload["labels"][k] == labels[k] for k in kept)
        # The container itself keeps every label.
        got = await client.get("/containers/big", headers={"Cargohold-Namespace": namespace})
        assert got.json()["labels"] == labels
        # A small event is untouched.
        await create(client, namespace, "small", labels={"a": "b"})
        last = (await history(client))[-1]["event"]
        assert "truncated" not in last and last["labels"] == {"a": "b"}


class TestEventRetention:
    async def test_bytes_bound_the_stored_events(self, settings: Settings, namespace: str) -> None:
        bounded = replace(settings, event_retention_bytes=300_000)
        labels = {f"k{n}": "x" * 4000 for n in range(10)}  # ~40 KB events
        async with in_process_client(bounded) as client:
            for n in range(30):
                await create(client, namespace, f"c{n:02d}", labels=labels)
            stored = stored_payloads(bounded)
            assert sum(size for _, size in stored) <= 300_000
            assert len(stored) < 31  # older ones were pruned...
            assert stored[-1][0] == 31  # ...never the newest (1 namespace + 30 creates)
            assert [e["id"] for e in await history(client)] == [event_id for event_id, _ in stored]
        # The count of bytes is taken again when the database opens: still within bounds.
        async with in_process_client(bounded) as client:
            for n in range(30, 40):
                await create(client, namespace, f"c{n:02d}", labels=labels)
            assert sum(size for _, size in stored_payloads(bounded)) <= 300_000

    async def test_a_resume_from_a_pruned_id_gets_an_error_event(self, settings: Settings, namespace: str) -> None:
        bounded = replace(settings, event_retention_bytes=100_000)
        labels = {f"k{n}": "x" * 4000 for n in range(5)}  # ~20 KB events
        async with running_server(bounded), uds_client(bounded, timeout=30) as client:
            for n in range(12):
                await create(client, namespace, f"c{n:02d}", labels=labels)
            oldest = stored_payloads(bounded)[0][0]
            assert oldest > 2
            for how in ({"params": {"since": "1"}}, {"headers": {"Last-Event-ID": "0"}}):
                async with sse(client, **how) as stream:  # type: ignore[arg-type]
                    frame = await stream.frame()
                    assert frame is not None and frame.event == "error" and frame.id is None
                    problem = json.loads(frame.data or "")
                    assert problem["status"] == 410 and problem["oldest_id"] == oldest
                    assert problem["type"] == "urn:cargohold:problem:events-lost"
                    assert f"the oldest event kept is {oldest}" in problem["detail"]
                    assert await stream.frame() is None  # and the stream ends
            # From the oldest kept on, a resume is whole.
            async with sse(client, params={"since": str(oldest - 1)}) as stream:
                frames = await stream.events(12 - (oldest - 2))
                assert [int(f.id or 0) for f in frames] == list(range(oldest, 14))

    async def test_a_lagging_subscriber_whose_events_were_pruned_gets_the_error(self, tmp_path: Any) -> None:
        db = await Database.open(tmp_path / "metadata.db", event_retention_bytes=50_000)
        bus = EventBus(queue_size=2)
        db.on_commit = bus.publish
        try:
            events = EventService(EventStore(db), bus)
            stream = await events.stream([], None)
            first = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0)  # subscribed, waiting for live events
            for n in range(20):
                async with db.write() as tx:
                    tx.append_event("ns", "/test", {"n": n, "pad": "x" * 5000})
            assert (await first).event["n"] == 0  # the queue of 2 overflowed after this
            with pytest.raises(EventsLostError) as lost:
                while True:
                    await anext(stream)
            assert lost.value.oldest_id > 2
        finally:
            await db.close()


# --- Streams per client ------------------------------------------------------------


async def test_streams_past_the_per_client_cap_are_429(settings: Settings) -> None:
    capped = replace(settings, max_streams_per_client=2)
    async with running_server(capped), uds_client(capped, timeout=30) as client:
        async with sse(client), sse(client):
            response = await client.get("/events")
            assert response.status_code == 429
            assert response.headers["content-type"] == PROBLEM
            problem = response.json()
            assert problem["type"] == "urn:cargohold:problem:resource-exhausted"
            assert "2 open streams" in problem["detail"]
            # A bad request is still refused for what it is, not counted.
            assert (await client.get("/events", params={"filter": "a=="})).status_code == 400
            # Other requests are served.
            assert (await client.get("/healthz")).status_code == 200
        # Once closed, both slots are free again (released as each response ends, once
        # the server has seen the client go).
        async def both_free() -> bool:
            async with client.stream("GET", "/events") as one, client.stream("GET", "/events") as two:
                return (one.status_code, two.status_code) == (200, 200)

        await wait_for(both_free, "both stream slots are free again", 5, every=0.05)
