"""The /containers router: a class per endpoint, each a ladder from bad input through
missing and conflict to valid.

Every rejected request runs inside `unchanged()`, which lists the namespaces, the test
namespace's containers and the whole event history before and after it: a rejection
must leave no row and no event. Each test has a fresh daemon (database in `tmp_path`)
and its own namespace (`ns_headers`). test_namespaces.py reuses the tables and helpers
defined here rather than repeating them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
from tests.conftest import container_body, spec

pytestmark = pytest.mark.anyio


def namespace_header(value: str) -> dict[bytes, bytes]:
    """A Cargohold-Namespace header holding any string (UTF-8 on the wire)."""
    return {b"Cargohold-Namespace": value.encode()}


async def listed_ids(
    client: httpx.AsyncClient, headers: Mapping[str, str], filters: Sequence[str] = ()
) -> list[str]:
    response = await client.get("/containers", params={"filter": list(filters)}, headers=headers)
    assert response.status_code == 200, response.text
    return [container["id"] for container in response.json()["containers"]]


async def merge_patch(
    client: httpx.AsyncClient,
    headers: Mapping[str, str],
    container_id: str,
    document: Any,
    if_match: str | None = None,
) -> httpx.Response:
    """PATCH with the media type RFC 7396 names."""
    sent = {**headers, "Content-Type": MERGE_PATCH}
    if if_match is not None:
        sent["If-Match"] = if_match
    return await client.patch(f"/containers/{container_id}", content=json.dumps(document), headers=sent)


class TestCreateContainer:
    @pytest.mark.parametrize("raw", MALFORMED_JSON)
    async def test_malformed_json(self, client: httpx.AsyncClient, ns_headers: dict[str, str], raw: bytes) -> None:
        async with unchanged(client, ns_headers):
            response = await client.post(
                "/containers", content=raw, headers={**ns_headers, "Content-Type": "application/json"}
            )
        assert_problem(response, 400, "JSON")

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            pytest.param({"id": "web"}, "body.spec", id="spec-missing"),
            pytest.param(container_body("web", spec="config.json"), "body.spec", id="spec-not-object"),
            pytest.param(container_body("web", labels=["env=prod"]), "body.labels", id="labels-list"),
            pytest.param(container_body("web", labels={"a": 1}), "body.labels.a", id="label-value-int"),
            pytest.param(container_body("web", image=5), "body.image", id="image-int"),
            pytest.param(container_body("web", runtime={"name": "kata"}), "body.runtime.name", id="runtime-name"),
            pytest.param(container_body("web", extensions=[]), "body.extensions", id="extensions-list"),
            pytest.param(container_body("web", bogus=1), "body.bogus", id="unknown-field"),
            pytest.param({"id": 5, "spec": spec()}, "body.id", id="id-int"),
            pytest.param(
                {"id": "web", "spec": {"root": {"path": "rootfs"}}}, "body.spec.ociVersion", id="oci-version-missing"
            ),
            pytest.param(container_body("web", spec=spec(ociVersion="2.0")), "body.spec.ociVersion", id="oci-version"),
            pytest.param(container_body("web", spec=spec(ociVersion=1)), "body.spec.ociVersion", id="oci-version-int"),
            pytest.param(
                container_body("web", spec=spec(process={"args": []})), "body.spec.process.args", id="args-empty"
            ),
            pytest.param(
                container_body("web", spec=spec(process={"args": "sh"})), "body.spec.process.args", id="args-string"
            ),
            pytest.param(
                container_body("web", spec=spec(process={"args": ["sh"], "user": {"uid": -1, "gid": 0}})),
                "body.spec.process.user.uid",
                id="uid-negative",
            ),
            pytest.param(container_body("web", spec={"ociVersion": "1.0.2"}), "body.spec.root", id="root-missing"),
            pytest.param(container_body("web", spec=spec(root={})), "body.spec.root.path", id="root-path-missing"),
            pytest.param(
                container_body("web", spec=spec(root={"path": ""})), "body.spec.root.path", id="root-path-empty"
            ),
            pytest.param(
                container_body("web", spec=spec(mounts=[{"type": "bind"}])),
                "body.spec.mounts.0.destination",
                id="mount-destination-missing",
            ),
        ],
    )
    async def test_invalid_body(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], body: Json, field: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.post("/containers", json=body, headers=ns_headers)
        problem = assert_problem(response, 422, field)
        assert error_fields(problem) == [field]

    @pytest.mark.parametrize(
        ("labels", "fragment"),
        [
            pytest.param({"k": "v" * 4095 + "!"}, "4097 bytes", id="4097-bytes"),
            pytest.param({"k": "é" * 2048}, "4097 bytes", id="bytes-not-characters"),
            pytest.param({f"k{i}": "v" for i in range(257)}, "at most 256", id="257-labels"),
            pytest.param({"": "v"}, "empty", id="empty-key"),
        ],
    )
    async def test_invalid_labels(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], labels: dict[str, str], fragment: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.post("/containers", json=container_body("web", labels=labels), headers=ns_headers)
        problem = assert_problem(response, 422, "body.labels", fragment)
        assert error_fields(problem) == ["body.labels"]

    @pytest.mark.parametrize(("container_id", "fragment"), INVALID_IDS)
    async def test_invalid_id(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], container_id: str, fragment: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.post("/containers", json=container_body(container_id), headers=ns_headers)
        problem = assert_problem(response, 422, "body.id", fragment)
        assert error_fields(problem) == ["body.id"]

    @pytest.mark.parametrize(("value", "fragment"), INVALID_IDS)
    async def test_invalid_namespace_header(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], value: str, fragment: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.post("/containers", json=container_body("web"), headers=namespace_header(value))
        assert_problem(response, 400, "namespace", fragment)

    @pytest.mark.parametrize("chunked", OVERSIZE)
    async def test_body_too_large(self, client: httpx.AsyncClient, ns_headers: dict[str, str], chunked: bool) -> None:
        async with unchanged(client, ns_headers):
            response = await send_oversize(client, "POST", "/containers", ns_headers, chunked)
        assert_problem(response, 413, str(MAX_BODY_BYTES))

    async def test_unknown_snapshotter(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        async with unchanged(client, ns_headers):
            response = await client.post(
                "/containers", json=container_body("web", snapshotter="zfs"), headers=ns_headers
            )
        assert_problem(response, 400, "snapshotter 'zfs'")

    async def test_missing_snapshot(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        # The namespace would be created on first use: the failed create must not leave it.
        async with unchanged(client, ns_headers):
            response = await client.post(
                "/containers", json=container_body("web", snapshot_key="nosuch"), headers=ns_headers
            )
        assert_problem(response, 422, '"nosuch"', namespace)

    async def test_conflict(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        first = await create(client, ns_headers, "web", labels={"v": "1"})
        async with unchanged(client, ns_headers):
            again = await client.post(
                "/containers", json=container_body("web", labels={"v": "2"}), headers=ns_headers
            )
        assert_problem(again, 409, '"web"', namespace, "already exists")
        got = await client.get("/containers/web", headers=ns_headers)
        assert got.json() == first.json()
        assert (await topics(client)).count((namespace, "/containers/create")) == 1

    @pytest.mark.parametrize("container_id", VALID_IDS)
    async def test_valid(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str], container_id: str
    ) -> None:
        body = container_body(
            container_id,
            labels={"env": "prod", "example.com/tier": "web"},
            image="docker.io/library/busybox:1.36",
            runtime={"name": "crun", "options": {"systemd": False}},
            extensions={"note": {"by": "test"}},
        )
        response = await client.post("/containers", json=body, headers=ns_headers)
        assert response.status_code == 201, response.text
        assert response.headers["location"] == f"/containers/{container_id}"
        etag = response.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
        created = response.json()
        assert {k: v for k, v in created.items() if k not in ("snapshotter", "created_at", "updated_at")} == {
            **body,
            "snapshot_key": "",
        }
        assert created["snapshotter"] in ("overlayfs", "native")
        assert timestamp(created["created_at"]) == timestamp(created["updated_at"])

        got = await client.get(f"/containers/{container_id}", headers=ns_headers)
        assert got.json() == created
        assert got.headers["etag"] == etag
        assert await topics(client) == [(namespace, "/namespaces/create"), (namespace, "/containers/create")]
        assert (await events(client))[1]["event"]["id"] == container_id

    async def test_labels_at_the_limits(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        widest = {"k": "v" * 4095}  # key and value: exactly 4096 bytes
        most = {f"k{i}": "v" for i in range(256)}
        for container_id, labels in (("wide", widest), ("many", most), ("multibyte", {"k": "é" * 2047 + "!"})):
            response = await client.post(
                "/containers", json=container_body(container_id, labels=labels), headers=ns_headers
            )
            assert response.status_code == 201, response.text
            assert response.json()["labels"] == labels

    async def test_body_of_exactly_the_limit(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        document = container_body("web", extensions={"pad": ""})
        document["extensions"]["pad"] = "p" * (MAX_BODY_BYTES - len(json.dumps(document)))
        data = json.dumps(document).encode()
        assert len(data) == MAX_BODY_BYTES
        response = await client.post(
            "/containers", content=data, headers={**ns_headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 201, response.text

    async def test_namespace_created_once_on_first_use(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await create(client, ns_headers, "web")
        await create(client, ns_headers, "db")
        assert await topics(client) == [
            (namespace, "/namespaces/create"),
            (namespace, "/containers/create"),
            (namespace, "/containers/create"),
        ]
        names = [ns["name"] for ns in (await client.get("/namespaces")).json()["namespaces"]]
        assert names == [namespace]

    async def test_default_namespace_without_header(self, client: httpx.AsyncClient) -> None:
        await create(client, {}, "web")
        assert await listed_ids(client, {"Cargohold-Namespace": "default"}) == ["web"]
        assert await topics(client) == [("default", "/namespaces/create"), ("default", "/containers/create")]


class TestListContainers:
    @pytest.mark.parametrize(
        ("filters", "fragments"),
        [
            pytest.param(["labels.a=b"], ["filter 1, position 8", "=="], id="single-equals"),
            pytest.param(["id=="], ["filter 1, position 4", "value"], id="no-value"),
            pytest.param([""], ["filter 1, position 0", "empty"], id="empty"),
            pytest.param(["id==a,,b"], ["filter 1, position 6"], id="double-comma"),
            pytest.param(["id==web", "image~=("], ["filter 2, position 7", "regular expression"], id="bad-regex"),
            pytest.param(['labels."a.b==v'], ["filter 1, position 7", "unterminated"], id="open-quote"),
        ],
    )
    async def test_bad_filter(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], filters: list[str], fragments: list[str]
    ) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await client.get("/containers", params={"filter": filters}, headers=ns_headers)
        assert_problem(response, 400, *fragments)

    @pytest.mark.parametrize(("value", "fragment"), INVALID_IDS)
    async def test_invalid_namespace_header(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], value: str, fragment: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.get("/containers", headers=namespace_header(value))
        assert_problem(response, 400, "namespace", fragment)

    async def test_unknown_namespace(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await create(client, {"Cargohold-Namespace": "elsewhere"}, "web")
        async with unchanged(client, ns_headers):
            response = await client.get("/containers", headers=ns_headers)
        assert_problem(response, 404, f'namespace "{namespace}"')

    async def test_other_namespace_is_invisible(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        other = {"Cargohold-Namespace": "other"}
        await create(client, ns_headers, "web")
        await create(client, other, "db")
        assert await listed_ids(client, ns_headers) == ["web"]
        assert await listed_ids(client, other) == ["db"]

    async def test_empty_namespace(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await create(client, ns_headers, "web")
        assert (await client.delete("/containers/web", headers=ns_headers)).status_code == 204
        assert await listed_ids(client, ns_headers) == []

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            pytest.param([], ["db", "job", "web"], id="none"),
            pytest.param(["id==web"], ["web"], id="id"),
            pytest.param(["id==nope"], [], id="id-no-match"),
            pytest.param([r"image~=^docker\.io/library/"], ["db", "web"], id="image-regex"),
            pytest.param(['labels."a.b"==v'], ["web"], id="quoted-label-key"),
            pytest.param(["labels.a.b==v"], [], id="unquoted-dotted-key"),
            pytest.param(["labels.env!=prod"], ["db", "job"], id="label-not-equal"),
            pytest.param(["labels.env"], ["db", "web"], id="label-present"),
            pytest.param(["id==web", "id==job"], ["job", "web"], id="repeated-is-or"),
            pytest.param(["labels.env,image~=postgres"], ["db"], id="comma-is-and"),
            pytest.param(["labels.env==prod,id==db"], [], id="and-no-match"),
            pytest.param(["runtime.name==crun"], ["job"], id="runtime"),
        ],
    )
    async def test_filters(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], filters: list[str], expected: list[str]
    ) -> None:
        await create(
            client,
            ns_headers,
            "web",
            image="docker.io/library/nginx:1.25",
            labels={"env": "prod", "a.b": "v"},
        )
        await create(client, ns_headers, "db", image="docker.io/library/postgres:16", labels={"env": "dev"})
        await create(client, ns_headers, "job", image="quay.io/acme/job:1", runtime={"name": "crun"})
        assert await listed_ids(client, ns_headers, filters) == expected

    async def test_valid(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        web = (await create(client, ns_headers, "web")).json()
        db = (await create(client, ns_headers, "db")).json()
        response = await client.get("/containers", headers=ns_headers)
        assert response.status_code == 200
        assert response.json() == {"containers": [db, web], "next_cursor": None}


class TestGetContainer:
    @pytest.mark.parametrize(("segment", "fragment"), INVALID_PATH_IDS)
    async def test_invalid_id(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], segment: str, fragment: str
    ) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await client.get(f"/containers/{segment}", headers=ns_headers)
        assert_problem(response, 400, "container id", fragment)

    @pytest.mark.parametrize(("value", "fragment"), INVALID_IDS)
    async def test_invalid_namespace_header(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], value: str, fragment: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.get("/containers/web", headers=namespace_header(value))
        assert_problem(response, 400, "namespace", fragment)

    async def test_unknown_namespace(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.get("/containers/web", headers=ns_headers)
        assert_problem(response, 404, f'namespace "{namespace}"')

    async def test_missing(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await client.get("/containers/db", headers=ns_headers)
        assert_problem(response, 404, 'container "db"', f'namespace "{namespace}"')

    async def test_other_namespace(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        other = {"Cargohold-Namespace": "other"}
        await create(client, ns_headers, "web")
        await create(client, other, "db")
        assert_problem(await client.get("/containers/web", headers=other), 404, 'container "web"', '"other"')
        assert (await client.get("/containers/web", headers=ns_headers)).status_code == 200

    @pytest.mark.parametrize("container_id", VALID_IDS)
    async def test_valid(self, client: httpx.AsyncClient, ns_headers: dict[str, str], container_id: str) -> None:
        created = await create(client, ns_headers, container_id, labels={"env": "prod"})
        response = await client.get(f"/containers/{container_id}", headers=ns_headers)
        assert response.status_code == 200
        assert response.json() == created.json()
        assert response.headers["etag"] == created.headers["etag"]


class TestUpdateContainer:
    @pytest.mark.parametrize("raw", MALFORMED_JSON)
    async def test_malformed_json(self, client: httpx.AsyncClient, ns_headers: dict[str, str], raw: bytes) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await client.patch(
                "/containers/web", content=raw, headers={**ns_headers, "Content-Type": MERGE_PATCH}
            )
        assert_problem(response, 400, "JSON")

    @pytest.mark.parametrize(
        ("patch", "field"),
        [
            pytest.param(["labels"], "body", id="not-an-object"),
            pytest.param({"labels": 5}, "body.labels", id="labels-int"),
            pytest.param({"labels": {"a": 1}}, "body.labels.a", id="label-value-int"),
            pytest.param({"labels": {"k": "v" * 4096}}, "body.labels", id="label-4097-bytes"),
            pytest.param({"labels": {f"k{i}": "v" for i in range(256)}}, "body.labels", id="257-labels"),
            pytest.param({"bogus": 1}, "body.bogus", id="unknown-field"),
            pytest.param({"image": ["busybox"]}, "body.image", id="image-list"),
            pytest.param({"runtime": {"name": "kata"}}, "body.runtime.name", id="runtime-name"),
            pytest.param({"spec": None}, "body.spec", id="spec-null"),
            pytest.param({"spec": "config.json"}, "body.spec", id="spec-string"),
            pytest.param({"spec": {"ociVersion": None}}, "body.spec.ociVersion", id="oci-version-removed"),
            pytest.param({"spec": {"ociVersion": "one"}}, "body.spec.ociVersion", id="oci-version"),
            pytest.param({"spec": {"process": {"args": []}}}, "body.spec.process.args", id="args-empty"),
            pytest.param({"spec": {"root": {"path": None}}}, "body.spec.root.path", id="root-path-removed"),
        ],
    )
    async def test_invalid_patch(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], patch: Any, field: str
    ) -> None:
        created = await create(client, ns_headers, "web", labels={"env": "prod"})
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, ns_headers, "web", patch)
        problem = assert_problem(response, 422, field)
        assert error_fields(problem) == [field]
        assert (await client.get("/containers/web", headers=ns_headers)).headers["etag"] == created.headers["etag"]

    @pytest.mark.parametrize(
        ("patch", "member"),
        [
            pytest.param({"id": "db"}, "id", id="id"),
            pytest.param({"id": None}, "id", id="id-null"),
            pytest.param({"created_at": "2001-01-01T00:00:00Z"}, "created_at", id="created-at"),
            pytest.param({"updated_at": "2001-01-01T00:00:00Z"}, "updated_at", id="updated-at"),
            pytest.param({"labels": {"k": "v"}, "id": "db"}, "id", id="with-a-valid-change"),
        ],
    )
    async def test_immutable(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], patch: Json, member: str
    ) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, ns_headers, "web", patch)
        assert_problem(response, 400, f'"{member}"', "cannot be changed")

    @pytest.mark.parametrize(("segment", "fragment"), INVALID_PATH_IDS)
    async def test_invalid_id(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], segment: str, fragment: str
    ) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, ns_headers, segment, {"labels": {"k": "v"}})
        assert_problem(response, 400, "container id", fragment)

    @pytest.mark.parametrize(("value", "fragment"), INVALID_IDS)
    async def test_invalid_namespace_header(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], value: str, fragment: str
    ) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await client.patch(
                "/containers/web", json={"labels": {"k": "v"}}, headers=namespace_header(value)
            )
        assert_problem(response, 400, "namespace", fragment)

    @pytest.mark.parametrize("chunked", OVERSIZE)
    async def test_body_too_large(self, client: httpx.AsyncClient, ns_headers: dict[str, str], chunked: bool) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await send_oversize(client, "PATCH", "/containers/web", ns_headers, chunked)
        assert_problem(response, 413, str(MAX_BODY_BYTES))

    async def test_unknown_namespace(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, ns_headers, "web", {"labels": {"k": "v"}})
        assert_problem(response, 404, f'namespace "{namespace}"')

    async def test_missing(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, ns_headers, "db", {"labels": {"k": "v"}}, if_match="*")
        assert_problem(response, 404, 'container "db"', f'namespace "{namespace}"')

    async def test_other_namespace(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        other = {"Cargohold-Namespace": "other"}
        await create(client, ns_headers, "web")
        await create(client, other, "db")
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, other, "web", {"labels": {"k": "v"}})
        assert_problem(response, 404, 'container "web"', '"other"')

    @pytest.mark.parametrize(
        "if_match",
        [
            pytest.param('"0123456789abcdef0123456789abcdef"', id="made-up"),
            pytest.param("stale", id="stale"),
            pytest.param("weak", id="weak-form-of-current"),
            pytest.param("unquoted", id="unquoted-current"),
        ],
    )
    async def test_if_match_failed(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], if_match: str
    ) -> None:
        stale = (await create(client, ns_headers, "web")).headers["etag"]
        current = (await merge_patch(client, ns_headers, "web", {"image": "busybox"})).headers["etag"]
        sent = {"stale": stale, "weak": f"W/{current}", "unquoted": current.strip('"')}.get(if_match, if_match)
        before = await client.get("/containers/web", headers=ns_headers)
        async with unchanged(client, ns_headers):
            response = await merge_patch(client, ns_headers, "web", {"labels": {"k": "v"}}, if_match=sent)
        assert_problem(response, 412, 'container "web"', current)
        after = await client.get("/containers/web", headers=ns_headers)
        assert after.json() == before.json()
        assert after.headers["etag"] == current

    @pytest.mark.parametrize(
        "if_match",
        [
            pytest.param(None, id="absent"),
            pytest.param("current", id="current"),
            pytest.param("*", id="any"),
            pytest.param("list", id="list-holding-current"),
        ],
    )
    async def test_valid(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str], if_match: str | None
    ) -> None:
        created = await create(client, ns_headers, "web", labels={"env": "prod", "tier": "web"})
        etag = created.headers["etag"]
        sent = {"current": etag, "list": f'"nope", {etag}'}.get(if_match or "", if_match)
        patch = {"labels": {"env": None, "team": "core"}, "image": "busybox", "id": "web"}
        response = await merge_patch(client, ns_headers, "web", patch, if_match=sent)
        assert response.status_code == 200, response.text
        updated = response.json()
        assert updated["labels"] == {"tier": "web", "team": "core"}
        assert updated["image"] == "busybox"
        assert updated["spec"] == created.json()["spec"]
        assert updated["created_at"] == created.json()["created_at"]
        assert timestamp(updated["updated_at"]) > timestamp(created.json()["updated_at"])
        assert response.headers["etag"] not in ("", etag)

        got = await client.get("/containers/web", headers=ns_headers)
        assert got.json() == updated
        assert got.headers["etag"] == response.headers["etag"]
        assert (await topics(client))[-1] == (namespace, "/containers/update")
        assert (await events(client))[-1]["event"]["labels"] == {"tier": "web", "team": "core"}

    async def test_plain_json_and_nested_merge(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await create(client, ns_headers, "web", spec=spec(hostname="web"))
        response = await client.patch(
            "/containers/web",
            json={"spec": {"hostname": None, "process": {"args": ["/bin/true"]}}, "labels": None},
            headers=ns_headers,
        )
        assert response.status_code == 200, response.text
        assert response.json()["labels"] == {}
        assert response.json()["spec"] == spec(process={"args": ["/bin/true"], "cwd": "/"})

    async def test_etag_chain(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        """Each update's ETag is the one the next must send; the previous one fails."""
        etag = (await create(client, ns_headers, "web")).headers["etag"]
        first = await merge_patch(client, ns_headers, "web", {"labels": {"n": "1"}}, if_match=etag)
        assert first.status_code == 200, first.text
        assert_problem(await merge_patch(client, ns_headers, "web", {"labels": {"n": "2"}}, if_match=etag), 412)
        second = await merge_patch(client, ns_headers, "web", {"labels": {"n": "2"}}, if_match=first.headers["etag"])
        assert second.status_code == 200, second.text
        assert second.json()["labels"] == {"n": "2"}


class TestDeleteContainer:
    @pytest.mark.parametrize(("segment", "fragment"), INVALID_PATH_IDS)
    async def test_invalid_id(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], segment: str, fragment: str
    ) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await client.delete(f"/containers/{segment}", headers=ns_headers)
        assert_problem(response, 400, "container id", fragment)

    @pytest.mark.parametrize(("value", "fragment"), INVALID_IDS)
    async def test_invalid_namespace_header(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], value: str, fragment: str
    ) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await client.delete("/containers/web", headers=namespace_header(value))
        assert_problem(response, 400, "namespace", fragment)

    async def test_unknown_namespace(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.delete("/containers/web", headers=ns_headers)
        assert_problem(response, 404, f'namespace "{namespace}"')

    async def test_missing(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        await create(client, ns_headers, "web")
        async with unchanged(client, ns_headers):
            response = await client.delete("/containers/db", headers=ns_headers)
        assert_problem(response, 404, 'container "db"', f'namespace "{namespace}"')

    async def test_other_namespace(self, client: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        other = {"Cargohold-Namespace": "other"}
        await create(client, ns_headers, "web")
        await create(client, other, "db")
        async with unchanged(client, ns_headers):
            response = await client.delete("/containers/web", headers=other)
        assert_problem(response, 404, 'container "web"', '"other"')

    async def test_valid(self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        await create(client, ns_headers, "web")
        await create(client, ns_headers, "db")
        response = await client.delete("/containers/web", headers=ns_headers)
        assert response.status_code == 204
        assert response.content == b""
        assert_problem(await client.get("/containers/web", headers=ns_headers), 404, 'container "web"')
        assert await listed_ids(client, ns_headers) == ["db"]

        async with unchanged(client, ns_headers):
            again = await client.delete("/containers/web", headers=ns_headers)
        assert_problem(again, 404, 'container "web"', f'namespace "{namespace}"')
        assert (await topics(client)).count((namespace, "/containers/delete")) == 1
        assert (await events(client))[-1]["event"] == {"id": "web"}

    async def test_last_container_leaves_the_namespace(
        self, client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await create(client, ns_headers, "web")
        assert (await client.delete("/containers/web", headers=ns_headers)).status_code == 204
        assert await listed_ids(client, ns_headers) == []
        assert (await client.get(f"/namespaces/{namespace}")).status_code == 200
