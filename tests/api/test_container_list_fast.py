"""GET /containers writes its body from SQLite, not from pydantic models: the bytes must
be what FastAPI writes for the same containers (each as GET /containers/{id} writes it,
joined as `ContainerList`), for plain lists and filtered ones; errors stay problems."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import pytest

from tests.api.containers import (
    assert_problem,
    create,
)
from tests.conftest import container_body, spec

pytestmark = pytest.mark.anyio

# Shapes that take the SQL path and shapes that fall back to pydantic, side by side.
CONTAINERS: dict[str, dict[str, Any]] = {
    "web": {"image": "docker.io/library/nginx:1.25", "labels": {"env": "prod", "group": "g1", "a.b": "v"}},
    "db": {"image": "docker.io/library/postgres:16", "labels": {"env": "dev", "group": "g2", "é": "ü"}},
    "job": {"image": "quay.io/acme/job:1", "runtime": {"name": "crun", "options": {"x": 1e-05}}},
    "calc": {"labels": {"group": "g1"}, "spec": spec(hostname="h", **{"x-n": [0.1, 1e-07, 2**70]})},
    "ext": {"labels": {'q"k': "1"}, "extensions": {"a": {"b": [1, None, True]}, "inf": math.inf}},
    "bare": {},
}

FILTERS = [
    pytest.param([], id="none"),
    pytest.param(["labels.group==g1"], id="label"),
    pytest.param(["labels.env!=prod"], id="not-equal"),
    pytest.param([r"image~=^docker\.io/"], id="regex"),
    pytest.param(["id==web", "runtime==crun"], id="or"),
    pytest.param(['labels."q\\"k"==1'], id="key-with-quote"),
    pytest.param(['labels."é"==ü'], id="non-ascii-key"),
    pytest.param(["labels.group==g1,labels.env"], id="equal-and-presence"),
    pytest.param(["labels.missing==x"], id="no-match"),
]


async def populate(client: httpx.AsyncClient, headers: Mapping[str, str]) -> None:
    for container_id, fields in CONTAINERS.items():
        # Sent as Python writes it, Infinity included (httpx's json= refuses it).
        body = json.dumps(container_body(container_id, **fields))
        sent = {**headers, "Content-Type": "application/json"}
        response = await client.post("/containers", content=body, headers=sent)
        assert response.status_code == 201, response.text


async def pydantic_body(client: httpx.AsyncClient, headers: Mapping[str, str], ids: Sequence[str]) -> bytes:
    """What the list was before: each container as FastAPI serializes the model."""
    parts = []
    for container_id in sorted(ids):
        response = await client.get(f"/containers/{container_id}", headers=headers)
        assert response.status_code == 200, response.text
        parts.append(response.content)
    return b'{"containers":[' + b",".join(parts) + b'],"next_cursor":null}'


async def listed(client: httpx.AsyncClient, headers: Mapping[str, str], filters: Sequence[str]) -> httpx.Response:
    response = await client.get("/containers", params={"filter": list(filters)}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response


@pytest.mark.parametrize("filters", FILTERS)
async def test_same_bytes_as_the_models(
    client: httpx.AsyncClient, ns_headers: dict[str, str], filters: list[str]
) -> None:
    await populate(client, ns_headers)
    response = await listed(client, ns_headers, filters)
    ids = [container["id"] for container in response.json()["containers"]]
    assert response.content == await pydantic_body(client, ns_headers, ids)
    assert int(response.headers["content-length"]) == len(response.content)


async def test_filters_choose_as_before(client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
    await populate(client, ns_headers)

    async def ids(*filters: str) -> list[str]:
        return [c["id"] for c in (await listed(client, ns_headers, filters)).json()["containers"]]

    assert await ids() == ["bare", "calc", "db", "ext", "job", "web"]
    assert await ids("labels.group==g1") == ["calc", "web"]
    assert await ids("labels.env!=prod") == ["bare", "calc", "db", "ext", "job"]
    assert await ids("id==web", "runtime==crun") == ["job", "web"]
    assert await ids('labels."q\\"k"==1') == ["ext"]
    assert await ids('labels."é"==ü') == ["db"]
    assert await ids("labels.group==g1,labels.env") == ["web"]
    assert await ids("labels.missing==x") == []


async def test_after_updates_and_deletes(client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
    await populate(client, ns_headers)
    patch = {**ns_headers, "Content-Type": "application/merge-patch+json"}
    body = json.dumps({"labels": {"group": "g2", "new": "ñ"}})
    assert (await client.patch("/containers/web", content=body, headers=patch)).status_code == 200
    assert (await client.delete("/containers/bare", headers=ns_headers)).status_code == 204
    response = await listed(client, ns_headers, ["labels.group==g2"])
    assert [c["id"] for c in response.json()["containers"]] == ["db", "web"]
    assert response.content == await pydantic_body(client, ns_headers, ["db", "web"])


async def test_over_a_real_server(live_client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
    await populate(live_client, ns_headers)
    for filters in ([], ["labels.group==g1"]):
        response = await listed(live_client, ns_headers, filters)
        ids = [container["id"] for container in response.json()["containers"]]
        assert response.content == await pydantic_body(live_client, ns_headers, ids)


@pytest.mark.parametrize(
    ("filters", "fragment"),
    [
        pytest.param(["labels.a=b"], "filter 1, position 8", id="single-equals"),
        pytest.param(["id==web", "image~=("], "filter 2, position 7", id="bad-regex"),
        pytest.param([""], "empty", id="empty"),
    ],
)
async def test_bad_filter_is_a_problem_before_the_store(
    client: httpx.AsyncClient, ns_headers: dict[str, str], filters: list[str], fragment: str
) -> None:
    # The namespace does not exist: a 400, not a 404, shows the filter is checked first.
    response = await client.get("/containers", params={"filter": filters}, headers=ns_headers)
    assert_problem(response, 400, fragment)


@pytest.mark.parametrize("filters", [[], ["labels.group==g1"], ["image~=x"]])
async def test_unknown_namespace(
    client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str], filters: list[str]
) -> None:
    response = await client.get("/containers", params={"filter": filters}, headers=ns_headers)
    assert_problem(response, 404, f'namespace "{namespace}"')


@pytest.mark.parametrize("filters", [[], ["labels.group==g1"], ["image~=x"]])
async def test_empty_known_namespace(
    client: httpx.AsyncClient, ns_headers: dict[str, str], filters: list[str]
) -> None:
    await create(client, ns_headers, "web")
    assert (await client.delete("/containers/web", headers=ns_headers)).status_code == 204
    assert (await listed(client, ns_headers, filters)).content == b'{"containers":[],"next_cursor":null}'
