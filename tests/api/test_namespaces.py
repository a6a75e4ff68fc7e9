"""The /namespaces router: a class per endpoint, each a ladder from bad input through
missing and conflict to valid.

A namespace is also made by the first write inside it (a container create); only its
labels can change, and only an empty one can be deleted. Rejected requests run inside
`unchanged()` (namespaces, containers and the event log read the same afterwards). The
identifier tables and helpers are those of test_containers.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from tests.api.containers import (
    INVALID_IDS,
    INVALID_PATH_IDS,
    MALFORMED_JSON,
    MAX_BODY_BYTES,
    MERGE_PATCH,
    OVERSIZE,
    VALID_IDS,
    Json,
    assert_problem,
    create,
    error_fields,
    events,
    send_oversize,
    timestamp,
    topics,
    unchanged,
)

pytestmark = pytest.mark.anyio


async def create_namespace(client: httpx.AsyncClient, name: str, labels: Mapping[str, str] | None = None) -> Json:
    response = await client.post("/namespaces", json={"name": name, "labels": dict(labels or {})})
    assert response.status_code == 201, response.text
    created: Json = response.json()
    return created


async def merge_patch(client: httpx.AsyncClient, name: str, document: Any) -> httpx.Response:
    """PATCH with the media type RFC 7396 names."""
    return await client.patch(
        f"/namespaces/{name}", content=json.dumps(document), headers={"Content-Type": MERGE_PATCH}
    )


async def names(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/namespaces")
    assert response.status_code == 200, response.text
    return [namespace["name"] for namespace in response.json()["namespaces"]]


class TestCreateNamespace:
    @pytest.mark.parametrize("raw", MALFORMED_JSON)
    async def test_malformed_json(self, client: httpx.AsyncClient, ns_headers: dict[str, str], raw: bytes) -> None:
        async with unchanged(client, ns_headers):
            response = await client.post("/namespaces", content=raw, headers={"Content-Type": "application/json"})
        assert_problem(response, 400, "JSON")

    @pytest.mark.parametrize(
        ("body", "field", "fragment"),
        [
            pytest.param({}, "body.name", "required", id="name-missing"),
            pytest.param({"name": 5}, "body.name", "string", id="name-int"),
            pytest.param({"name": "team", "labels": ["a=b"]}, "body.labels", "dictionary", id="labels-list"),
            pytest.param({"name": "team", "labels": {"a": 1}}, "body.labels.a", "string", id="label-value-int"),
            pytest.param({"name": "team", "labels": {"k": "v" * 4096}}, "body.labels", "4097 bytes", id="4097-bytes"),
            pytest.param(
                {"name": "team", "labels": {f"k{i}": "v" for i in range(257)}},
                "body.labels",
                "at most 256",
                id="257-labels",
            ),
            pytest.param({"name": "team", "owner": "me"}, "body.owner", "not permitted", id="unknown-field"),
        ],
    )
    async def test_invalid_body(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], body: Json, field: str, fragment: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.post("/namespaces", json=body)
        problem = assert_problem(response, 422, field, fragment)
        assert error_fields(problem) == [field]

    @pytest.mark.parametrize(("name", "fragment"), INVALID_IDS)
    async def test_invalid_name(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], name: str, fragment: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.post("/namespaces", json={"name": name})
        problem = assert_problem(response, 422, "body.name", fragment)
        assert error_fields(problem) == ["body.name"]

    @pytest.mark.parametrize("chunked", OVERSIZE)
    async def test_body_too_large(self, client: httpx.AsyncClient, ns_headers: dict[str, str], chunked: bool) -> None:
        async with unchanged(client, ns_headers):
            response = await send_oversize(client, "POST", "/namespaces", {}, chunked)
        assert_problem(response, 413, str(MAX_BODY_BYTES))

    async def test_conflict(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        first = await create_namespace(client, namespace, {"team": "web"})
        async with unchanged(client, ns_headers):
            again = await client.post("/namespaces", json={"name": namespace, "labels": {"team": "db"}})
        assert_problem(again, 409, f'namespace "{namespace}"', "already exists")
        assert (await client.get(f"/namespaces/{namespace}")).json() == first
        assert await topics(client) == [(namespace, "/namespaces/create")]

    async def test_conflict_with_one_made_on_first_use(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            again = await client.post("/namespaces", json={"name": namespace})
        assert_problem(again, 409, f'namespace "{namespace}"', "already exists")

    @pytest.mark.parametrize("name", VALID_IDS)
    async def test_valid(self, client: httpx.AsyncClient, name: str) -> None:
        labels = {"team": "web", "example.com/cost-centre": "42"}
        response = await client.post("/namespaces", json={"name": name, "labels": labels})
        assert response.status_code == 201, response.text
        assert response.headers["location"] == f"/namespaces/{name}"
        created = response.json()
        assert {k: v for k, v in created.items() if k not in ("created_at", "updated_at")} == {
            "name": name,
            "labels": labels,
        }
        assert timestamp(created["created_at"]) == timestamp(created["updated_at"])

        assert (await client.get(f"/namespaces/{name}")).json() == created
        assert await topics(client) == [(name, "/namespaces/create")]
        assert (await events(client))[0]["event"] == {"name": name, "labels": labels}
        # It exists now: listing its containers is an empty list, not a 404.
        listed = await client.get("/containers", headers={"Cargohold-Namespace": name})
        assert listed.json() == {"containers": [], "next_cursor": None}

    async def test_labels_at_the_limits(self, client: httpx.AsyncClient) -> None:
        widest = {"k": "v" * 4095}  # key and value: exactly 4096 bytes
        most = {f"k{i}": "v" for i in range(256)}
        for name, labels in (("wide", widest), ("many", most)):
            assert (await create_namespace(client, name, labels))["labels"] == labels

    async def test_labels_default_to_none(self, client: httpx.AsyncClient, namespace: str) -> None:
        response = await client.post("/namespaces", json={"name": namespace})
        assert response.status_code == 201, response.text
        assert response.json()["labels"] == {}


class TestListNamespaces:
    async def test_none_yet(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/namespaces")
        assert response.status_code == 200
        assert response.json() == {"namespaces": [], "next_cursor": None}

    async def test_valid(self, client: httpx.AsyncClient) -> None:
        made = await create_namespace(client, "web", {"team": "web"})
        await create(client, {"Cargohold-Namespace": "apps"}, "api")  # made on first use
        apps = (await client.get("/namespaces/apps")).json()
        response = await client.get("/namespaces")
        assert response.status_code == 200
        assert response.json() == {"namespaces": [apps, made], "next_cursor": None}
        assert apps["labels"] == {}

    async def test_deleted_ones_are_gone(self, client: httpx.AsyncClient) -> None:
        await create_namespace(client, "old")
        await create_namespace(client, "new")
        assert (await client.delete("/namespaces/old")).status_code == 204
        assert await names(client) == ["new"]


class TestGetNamespace:
    @pytest.mark.parametrize(("segment", "fragment"), INVALID_PATH_IDS)
    async def test_invalid_name(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], segment: str, fragment: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.get(f"/namespaces/{segment}")
        assert_problem(response, 400, "namespace", fragment)

    async def test_missing(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        await create_namespace(client, "other")
        async with unchanged(client, ns_headers):
            response = await client.get(f"/namespaces/{namespace}")
        assert_problem(response, 404, f'namespace "{namespace}"')

    @pytest.mark.parametrize("name", VALID_IDS)
    async def test_valid(self, client: httpx.AsyncClient, name: str) -> None:
        created = await create_namespace(client, name, {"team": "web"})
        response = await client.get(f"/namespaces/{name}")
        assert response.status_code == 200
        assert response.json() == created

    async def test_made_on_first_use(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await create(client, ns_headers, "web")
        response = await client.get(f"/namespaces/{namespace}")
        assert response.status_code == 200
        assert response.json()["name"] == namespace
        assert response.json()["labels"] == {}


class TestUpdateNamespace:
    @pytest.mark.parametrize("raw", MALFORMED_JSON)
    async def test_malformed_json(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str], raw: bytes
    ) -> None:
        await create_namespace(client, namespace)
        async with unchanged(client, ns_headers):
            response = await client.patch(
                f"/namespaces/{namespace}", content=raw, headers={"Content-Type": MERGE_PATCH}
            )
        assert_problem(response, 400, "JSON")

    @pytest.mark.parametrize(
        ("patch", "field"),
        [
            pytest.param(["labels"], "body", id="not-an-object"),
            pytest.param({"labels": 5}, "body.labels", id="labels-int"),
            pytest.param({"labels": ["a=b"]}, "body.labels", id="labels-list"),
            pytest.param({"labels": {"a": 1}}, "body.labels.a", id="label-value-int"),
            pytest.param({"labels": {"k": "v" * 4096}}, "body.labels", id="label-4097-bytes"),
            pytest.param({"labels": {f"k{i}": "v" for i in range(256)}}, "body.labels", id="257-labels"),
            pytest.param({"owner": "me"}, "body.owner", id="unknown-field"),
        ],
    )
    async def test_invalid_patch(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str], patch: Any, field: str
    ) -> None:
        await create_namespace(client, namespace, {"team": "web"})
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, namespace, patch)
        problem = assert_problem(response, 422, field)
        assert error_fields(problem) == [field]

    @pytest.mark.parametrize(
        "patch",
        [
            pytest.param({"name": "other"}, id="rename"),
            pytest.param({"name": None}, id="name-null"),
            pytest.param({"name": "other", "labels": {"k": "v"}}, id="with-a-valid-change"),
        ],
    )
    async def test_rename(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str], patch: Json
    ) -> None:
        await create_namespace(client, namespace)
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, namespace, patch)
        assert_problem(response, 400, "name", "cannot be changed")
        assert await names(client) == [namespace]

    @pytest.mark.parametrize(("segment", "fragment"), INVALID_PATH_IDS)
    async def test_invalid_name(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], segment: str, fragment: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, segment, {"labels": {"k": "v"}})
        assert_problem(response, 400, "namespace", fragment)

    @pytest.mark.parametrize("chunked", OVERSIZE)
    async def test_body_too_large(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str], chunked: bool
    ) -> None:
        await create_namespace(client, namespace)
        async with unchanged(client, ns_headers):
            response = await send_oversize(client, "PATCH", f"/namespaces/{namespace}", {}, chunked)
        assert_problem(response, 413, str(MAX_BODY_BYTES))

    async def test_missing(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, namespace, {"labels": {"k": "v"}})
        assert_problem(response, 404, f'namespace "{namespace}"')

    async def test_valid(self, client: httpx.AsyncClient, namespace: str) -> None:
        created = await create_namespace(client, namespace, {"team": "web", "old": "yes"})
        patch = {"name": namespace, "labels": {"old": None, "tier": "1", "team": "core"}}
        response = await merge_patch(client, namespace, patch)
        assert response.status_code == 200, response.text
        updated = response.json()
        assert updated["labels"] == {"team": "core", "tier": "1"}
        assert updated["created_at"] == created["created_at"]
        assert timestamp(updated["updated_at"]) > timestamp(created["updated_at"])
        assert (await client.get(f"/namespaces/{namespace}")).json() == updated
        assert await topics(client) == [(namespace, "/namespaces/create"), (namespace, "/namespaces/update")]
        assert (await events(client))[-1]["event"] == {"name": namespace, "labels": {"team": "core", "tier": "1"}}

    async def test_plain_json_and_null_labels(self, client: httpx.AsyncClient, namespace: str) -> None:
        await create_namespace(client, namespace, {"team": "web"})
        response = await client.patch(f"/namespaces/{namespace}", json={"labels": None})
        assert response.status_code == 200, response.text
        assert response.json()["labels"] == {}

    async def test_made_on_first_use(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await create(client, ns_headers, "web")
        response = await merge_patch(client, namespace, {"labels": {"team": "web"}})
        assert response.status_code == 200, response.text
        assert response.json()["labels"] == {"team": "web"}


class TestDeleteNamespace:
    @pytest.mark.parametrize(("segment", "fragment"), INVALID_PATH_IDS)
    async def test_invalid_name(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], segment: str, fragment: str
    ) -> None:
        await create_namespace(client, "x")
        async with unchanged(client, ns_headers):
            response = await client.delete(f"/namespaces/{segment}")
        assert_problem(response, 400, "namespace", fragment)

    async def test_missing(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        await create_namespace(client, "other")
        async with unchanged(client, ns_headers):
            response = await client.delete(f"/namespaces/{namespace}")
        assert_problem(response, 404, f'namespace "{namespace}"')

    async def test_not_empty(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await client.delete(f"/namespaces/{namespace}")
        assert_problem(response, 409, f'namespace "{namespace}"', "not empty", "1 container")
        assert (await client.get("/containers/web", headers=ns_headers)).status_code == 200

    async def test_valid(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        await create(client, ns_headers, "web")
        assert (await client.delete("/containers/web", headers=ns_headers)).status_code == 204
        response = await client.delete(f"/namespaces/{namespace}")
        assert response.status_code == 204
        assert response.content == b""
        assert_problem(await client.get(f"/namespaces/{namespace}"), 404, f'namespace "{namespace}"')
        assert_problem(await client.get("/containers", headers=ns_headers), 404, f'namespace "{namespace}"')
        assert await names(client) == []

        async with unchanged(client, ns_headers):
            again = await client.delete(f"/namespaces/{namespace}")
        assert_problem(again, 404, f'namespace "{namespace}"')
        assert (await topics(client))[-1] == (namespace, "/namespaces/delete")
        assert (await topics(client)).count((namespace, "/namespaces/delete")) == 1
        assert (await events(client))[-1]["event"] == {"name": namespace}

    async def test_made_again_on_next_use(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await create_namespace(client, namespace, {"team": "web"})
        assert (await client.delete(f"/namespaces/{namespace}")).status_code == 204
        await create(client, ns_headers, "web")
        assert (await client.get(f"/namespaces/{namespace}")).json()["labels"] == {}
        assert [topic for _, topic in await topics(client)] == [
            "/namespaces/create",
            "/namespaces/delete",
            "/namespaces/create",
            "/containers/create",
        ]
