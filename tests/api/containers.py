"""What the container and namespace tests share: the identifier and body tables, the
problem+json assertion, `unchanged()` (a rejected request leaves every row and event as
it was) and the calls they repeat. Not a test module: test modules import it, never
each other."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import container_body

Json = dict[str, Any]


MAX_BODY_BYTES = 1024 * 1024


MERGE_PATCH = "application/merge-patch+json"


RULE = "letters and digits"  # every identifier-rule detail states the rule in these words


# Identifiers that break the rule, as sent in a body or the Cargohold-Namespace header.
INVALID_IDS = [
    pytest.param("../x", RULE, id="traversal"),
    pytest.param("", "empty", id="empty"),
    pytest.param("x" * 77, "at most 76", id="77-chars"),
    pytest.param("wéb", RULE, id="unicode"),
    pytest.param("-web", RULE, id="leading-separator"),
    pytest.param("web-", RULE, id="trailing-separator"),
    pytest.param("we..b", RULE, id="double-separator"),
]


# The same rule broken in a URL path segment; an empty segment is the collection's URL
# (a redirect to /containers), not an id, so it has no case here.
INVALID_PATH_IDS = [
    pytest.param("..%2Fx", RULE, id="traversal"),
    pytest.param("%2E%2E", RULE, id="dot-dot"),
    pytest.param("x" * 77, "at most 76", id="77-chars"),
    pytest.param("w%C3%A9b", RULE, id="unicode"),
    pytest.param("-web", RULE, id="leading-separator"),
    pytest.param("web-", RULE, id="trailing-separator"),
    pytest.param("we..b", RULE, id="double-separator"),
]


VALID_IDS = [
    pytest.param("web", id="plain"),
    pytest.param("a.b_c-d", id="separators"),
    pytest.param("W3b", id="mixed-case"),
    pytest.param("x" * 76, id="76-chars"),
]


MALFORMED_JSON = [
    pytest.param(b"{bad", id="unquoted-key"),
    pytest.param(b'{"id": "web"', id="truncated"),
    pytest.param(b'{"id": "web",}', id="trailing-comma"),
]


# Request bodies over the limit: announced by Content-Length, or streamed without one.
OVERSIZE = [
    pytest.param(False, id="content-length"),
    pytest.param(True, id="chunked"),
]


def assert_problem(response: httpx.Response, status: int, *fragments: str) -> Json:
    """Assert an RFC 9457 problem with `status` whose detail holds every fragment."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: Json = response.json()
    assert problem["status"] == status
    assert problem["type"] and problem["title"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    for fragment in fragments:
        assert fragment in problem["detail"], problem["detail"]
    return problem


def error_fields(problem: Json) -> list[str]:
    return [error["field"] for error in problem.get("errors") or []]


def timestamp(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), f"{value} is not UTC"
    return parsed


async def observed(client: httpx.AsyncClient, headers: Mapping[str, str]) -> Json:
    """What a rejected request must not change: namespaces, containers, events."""
    containers = await client.get("/containers", headers=headers)
    namespaces = await client.get("/namespaces")
    history = await client.get("/events/history", params={"limit": 1000})
    return {
        "containers": (containers.status_code, containers.json()),
        "namespaces": namespaces.json(),
        "events": history.json()["events"],
    }


@asynccontextmanager
async def unchanged(client: httpx.AsyncClient, headers: Mapping[str, str]) -> AsyncIterator[None]:
    """Assert that the requests made inside leave every row and the event log as they were."""
    before = await observed(client, headers)
    yield
    assert await observed(client, headers) == before


async def events(client: httpx.AsyncClient) -> list[Json]:
    history = await client.get("/events/history", params={"limit": 1000})
    assert history.status_code == 200, history.text
    found: list[Json] = history.json()["events"]
    return found


async def topics(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    """(namespace, topic) of every stored event, oldest first."""
    return [(event["namespace"], event["topic"]) for event in await events(client)]


async def create(
    client: httpx.AsyncClient, headers: Mapping[str, str], container_id: str = "web", **fields: Any
) -> httpx.Response:
    response = await client.post("/containers", json=container_body(container_id, **fields), headers=headers)
    assert response.status_code == 201, response.text
    return response


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


async def send_oversize(
    client: httpx.AsyncClient, method: str, url: str, headers: Mapping[str, str], chunked: bool
) -> httpx.Response:
    """Send a JSON object one byte over the limit, with or without a Content-Length."""
    data = json.dumps({"pad": "p" * (MAX_BODY_BYTES + 1 - len('{"pad": ""}'))}).encode()
    assert len(data) == MAX_BODY_BYTES + 1
    content = _chunks(data) if chunked else data
    sent = {**headers, "Content-Type": "application/json"}
    return await client.request(method, url, content=content, headers=sent)
