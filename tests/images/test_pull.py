"""Pull through the API from a real docker-registry (see conftest): OCI, Docker schema 2, an
index with a platform choice, whiteouts, zstd; chain-id snapshots and their reuse; and the
failures that must leave no image."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from app.config import Settings
from app.images.descriptors import DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST
from app.images.unpack import chain_ids
from tests.conftest import in_process_client, running_server, uds_client
from tests.images.conftest import (
    PASSWORD,
    REPOSITORY,
    USERNAME,
    HttpServer,
    Registry,
    Reply,
    Seen,
    diff_ids_of,
    files_of,
    image_events,
    image_names,
    pull,
    pulled,
    push_image,
    snapshots,
)
from tests.rootfs import files_tar

pytestmark = [pytest.mark.anyio, pytest.mark.registry]

Json = dict[str, Any]



class TestPull:
    async def test_oci_image_is_pulled_and_unpacked_as_chain_snapshots(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, tmp_path: Path) -> None:
        reference = f"{registry.host}/{REPOSITORY}:latest"
        raw = registry.raw_manifest(reference)
        response = await pull(api, headers, reference)
        assert response.status_code == 201, response.text
        image = response.json()
        assert response.headers["Location"] == f"/images/{reference}"
        manifest = json.loads(raw)
        assert image["name"] == reference
        assert image["target"] == {"media_type": OCI_MANIFEST, "digest": f"sha256:{hashlib.sha256(raw).hexdigest()}",
                                   "size": len(raw)}
        assert image["config_digest"] == manifest["config"]["digest"]
        assert image["platforms"] == ["linux/amd64"]
        assert image["size"] == len(raw) + manifest["config"]["size"] + sum(x["size"] for x in manifest["layers"])
        (chain_id,) = chain_ids(diff_ids_of(registry, "latest"))
        snapshot = (await snapshots(api, headers))[chain_id]
        assert (snapshot["kind"], snapshot["parent"]) == ("committed", None)
        assert {"bin/busybox", "bin/sh", "etc/passwd", "etc/group"} <= await files_of(api, headers, chain_id, tmp_path)
        # Served as stored, by its full name and by a short one.
        got = await api.get(f"/images/{reference}", headers=headers)
        assert got.status_code == 200 and got.json() == image
        config = await api.get(f"/images/{reference}/config", headers=headers)
        assert config.status_code == 200
        assert config.json()["config"]["Cmd"] == ["/bin/sh"]
        assert config.json()["rootfs"]["diff_ids"] == diff_ids_of(registry, "latest")

    async def test_layers_with_a_whiteout_stack_up(self, api: httpx.AsyncClient, headers: dict[str, str],
                                                   registry: Registry, tmp_path: Path) -> None:
        await pulled(api, headers, f"{registry.host}/{REPOSITORY}:two")
        chain = chain_ids(diff_ids_of(registry, "two"))
        assert len(chain) == 3
        found = await snapshots(api, headers)
        assert [found[key]["parent"] for key in chain] == [None, chain[0], chain[1]]
        files = await files_of(api, headers, chain[-1], tmp_path)
        assert "etc/hello" in files and "bin/busybox" in files
        assert "etc/group" not in files  # whited out by the third layer
        assert "etc/group" in await files_of(api, headers, chain[1], tmp_path)

    async def test_second_image_sharing_a_layer_reuses_its_blob_and_snapshot(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry) -> None:
        await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        manifest = json.loads(registry.raw_manifest(f"{registry.host}/{REPOSITORY}:two"))
        shared, *new = [layer["digest"] for layer in manifest["layers"]]
        base = chain_ids(diff_ids_of(registry, "two"))[0]
        before = (await snapshots(api, headers))[base]
        gets = {digest: registry.blob_gets(digest) for digest in [shared, *new]}
        await pulled(api, headers, f"{registry.host}/{REPOSITORY}:two")
        assert registry.blob_gets(shared) == gets[shared]  # not downloaded again
        assert [registry.blob_gets(digest) for digest in new] == [gets[digest] + 1 for digest in new]
        assert (await snapshots(api, headers))[base] == before  # the same snapshot, not remade
        # Pulling the same image again downloads nothing and makes no snapshot.
        count = len(await snapshots(api, headers))
        again = {digest: registry.blob_gets(digest) for digest in [shared, *new]}
        await pulled(api, headers, f"{registry.host}/{REPOSITORY}:two")
        assert {digest: registry.blob_gets(digest) for digest in [shared, *new]} == again
        assert len(await snapshots(api, headers)) == count
        assert sorted(await image_names(api, headers)) == [f"{registry.host}/{REPOSITORY}:latest",
                                                          f"{registry.host}/{REPOSITORY}:two"]

    async def test_two_concurrent_pulls_sharing_a_layer_both_succeed(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, tmp_path: Path) -> None:
        manifest = json.loads(registry.raw_manifest(f"{registry.host}/{REPOSITORY}:two"))
        shared = manifest["layers"][0]["digest"]
        before = registry.blob_gets(shared)
        first, second = await asyncio.gather(pull(api, headers, f"{registry.host}/{REPOSITORY}:latest"),
                                             pull(api, headers, f"{registry.host}/{REPOSITORY}:two"))
        assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
        assert registry.blob_gets(shared) == before + 1  # downloaded once
        chain = chain_ids(diff_ids_of(registry, "two"))
        assert sorted(await snapshots(api, headers)) == sorted(chain)
        assert "etc/hello" in await files_of(api, headers, chain[-1], tmp_path)

    async def test_docker_schema2_image(self, api: httpx.AsyncClient, headers: dict[str, str],
                                        registry: Registry) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:v2s2")
        assert image["target"]["media_type"] == DOCKER_MANIFEST
        (chain_id,) = chain_ids(diff_ids_of(registry, "v2s2"))
        assert chain_id in await snapshots(api, headers)

    async def test_index_gives_the_host_platform_by_default(self, api: httpx.AsyncClient, headers: dict[str, str],
                                                            registry: Registry) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:multi")
        assert image["target"]["media_type"] == OCI_INDEX
        assert image["platforms"] == ["linux/amd64", "linux/arm64"]
        latest = json.loads(registry.raw_manifest(f"{registry.host}/{REPOSITORY}:latest"))
        assert image["config_digest"] == latest["config"]["digest"]
        assert list(await snapshots(api, headers)) == chain_ids(diff_ids_of(registry, "latest"))

    async def test_index_with_a_chosen_platform(self, api: httpx.AsyncClient, headers: dict[str, str],
                                                registry: Registry) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:multi", platform="linux/arm64")
        two = json.loads(registry.raw_manifest(f"{registry.host}/{REPOSITORY}:two"))
        assert image["config_digest"] == two["config"]["digest"]
        assert set(chain_ids(diff_ids_of(registry, "two"))) == set(await snapshots(api, headers))

    async def test_docker_manifest_list(self, api: httpx.AsyncClient, headers: dict[str, str],
                                        registry: Registry) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:list")
        assert image["platforms"] == ["linux/amd64"]
        assert list(await snapshots(api, headers)) == chain_ids(diff_ids_of(registry, "v2s2"))

    async def test_zstd_and_plain_layers(self, api: httpx.AsyncClient, headers: dict[str, str],
                                         registry: Registry, tmp_path: Path) -> None:
        first = files_tar({"etc/zstd": b"compressed with zstd\n"})
        second = files_tar({"etc/plain": b"not compressed\n"})
        third = files_tar({"etc/gzip": b"gzip\n"})
        push_image(registry, "test/zstd", "v1", [
            (first, zstandard.ZstdCompressor().compress(first), OCI_LAYER_ZSTD),
            (second, second, "application/vnd.oci.image.layer.v1.tar"),
            (third, gzip.compress(third), OCI_LAYER_GZIP),
        ])
        image = await pulled(api, headers, f"{registry.host}/test/zstd:v1")
        config = (await api.get(f"/images/{image['name']}/config", headers=headers)).json()
        top = chain_ids(config["rootfs"]["diff_ids"])[-1]
        assert {"etc/zstd", "etc/plain", "etc/gzip"} <= await files_of(api, headers, top, tmp_path)


class TestPullFailures:
    async def test_missing_tag_is_404_and_leaves_no_image(self, api: httpx.AsyncClient, headers: dict[str, str],
                                                          registry: Registry) -> None:
        response = await pull(api, headers, f"{registry.host}/{REPOSITORY}:no-such-tag")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert f'image "{registry.host}/{REPOSITORY}:no-such-tag" not found' in response.json()["detail"]
        assert await image_names(api, headers) == []
        assert await snapshots(api, headers) == {}

    async def test_bad_reference_is_400(self, api: httpx.AsyncClient, headers: dict[str, str]) -> None:
        response = await pull(api, headers, "Not A Reference")
        assert response.status_code == 400
        assert "whitespace" in response.json()["detail"]
        assert await image_names(api, headers) == []

    async def test_platform_not_offered_is_400_naming_those_offered(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry) -> None:
        response = await pull(api, headers, f"{registry.host}/{REPOSITORY}:multi", platform="linux/s390x")
        assert response.status_code == 400
        assert "no manifest for platform linux/s390x; it offers linux/amd64, linux/arm64" in response.json()["detail"]
        assert await image_names(api, headers) == []

    async def test_layer_with_other_bytes_is_400_and_leaves_no_image(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, settings: Settings) -> None:
        tar = files_tar({"etc/corrupt": b"x" * 1000})
        blob = gzip.compress(tar)
        push_image(registry, "test/corrupt", "v1", [(tar, blob, OCI_LAYER_GZIP)])
        digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
        registry.blob_data(digest).write_bytes(bytes(len(blob)))  # same size, other bytes
        response = await pull(api, headers, f"{registry.host}/test/corrupt:v1")
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        detail = response.json()["detail"]
        assert f"blob {digest}" in detail and "does not match its descriptor" in detail
        assert await image_names(api, headers) == []
        assert await snapshots(api, headers) == {}
        assert not (settings.root / "content" / "blobs" / "sha256" / digest.split(":")[1]).exists()
        assert not any((settings.root / "content" / "ingest").glob("*"))

    async def test_diff_id_mismatch_is_400_and_unpacks_nothing(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry) -> None:
        tar = files_tar({"etc/lies": b"the config lies about me\n"})
        push_image(registry, "test/diffid", "v1", [(tar, gzip.compress(tar), OCI_LAYER_GZIP)],
                   diff_ids=["sha256:" + "ab" * 32])
        response = await pull(api, headers, f"{registry.host}/test/diffid:v1")
        assert response.status_code == 400
        detail = response.json()["detail"]
        assert f"has digest sha256:{hashlib.sha256(tar).hexdigest()}" in detail
        assert "diff id is sha256:" + "ab" * 32 in detail
        assert await image_names(api, headers) == []
        assert await snapshots(api, headers) == {}

    async def test_unknown_layer_media_type_is_400(self, api: httpx.AsyncClient, headers: dict[str, str],
                                                   registry: Registry) -> None:
        tar = files_tar({"x": b"x"})
        push_image(registry, "test/weird", "v1", [(tar, tar, "application/x-weird")])
        response = await pull(api, headers, f"{registry.host}/test/weird:v1")
        assert response.status_code == 400
        assert "application/x-weird" in response.json()["detail"]
        assert await image_names(api, headers) == []

    async def test_registry_down_is_503(self, api: httpx.AsyncClient, headers: dict[str, str]) -> None:
        response = await pull(api, headers, "127.0.0.1:1/library/busybox:latest")
        assert response.status_code == 503
        assert "unavailable" in response.json()["detail"]
        assert await image_names(api, headers) == []


class TestImages:
    async def test_list_filter_label_delete_and_their_events(
            self, api: httpx.AsyncClient, headers: dict[str, str], namespace: str, registry: Registry) -> None:
        latest, two = (f"{registry.host}/{REPOSITORY}:{tag}" for tag in ("latest", "two"))
        await pulled(api, headers, latest)
        await pulled(api, headers, two)
        await pulled(api, headers, latest)  # the name exists: an update
        assert await image_events(api, namespace) == [
            ("/images/create", latest), ("/images/create", two), ("/images/update", latest)]

        listed = await api.get("/images", params={"filter": "name~=:two$"}, headers=headers)
        assert [image["name"] for image in listed.json()["images"]] == [two]
        patched = await api.patch(f"/images/{two}", json={"labels": {"env": "prod", "gone": None}},
                                  headers={**headers, "Content-Type": "application/merge-patch+json"})
        assert patched.status_code == 200, patched.text
        assert patched.json()["labels"] == {"env": "prod"}
        listed = await api.get("/images", params={"filter": "labels.env==prod"}, headers=headers)
        assert [image["name"] for image in listed.json()["images"]] == [two]
        paged = await api.get("/images", params={"limit": 1}, headers=headers)
        assert [image["name"] for image in paged.json()["images"]] == [latest]
        assert paged.json()["next_cursor"] == latest
        bad = await api.get("/images", params={"filter": "name=="}, headers=headers)
        assert bad.status_code == 400

        renamed = await api.patch(f"/images/{two}", json={"name": "other"},
                                  headers={**headers, "Content-Type": "application/merge-patch+json"})
        assert renamed.status_code == 400
        # A pull again keeps the labels.
        assert (await pulled(api, headers, two))["labels"] == {"env": "prod"}

        # The namespace holds images: it cannot go.
        refused = await api.delete(f"/namespaces/{namespace}")
        assert refused.status_code == 409 and "image" in refused.json()["detail"]

        assert (await api.delete(f"/images/{two}", headers=headers)).status_code == 204
        missing = await api.get(f"/images/{two}", headers=headers)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert (await api.delete(f"/images/{two}", headers=headers)).status_code == 404
        assert (await api.get(f"/images/{two}/config", headers=headers)).status_code == 404
        assert await image_names(api, headers) == [latest]
        assert (await image_events(api, namespace))[-1] == ("/images/delete", two)

    async def test_short_names_are_normalized(self, api: httpx.AsyncClient, headers: dict[str, str],
                                              registry: Registry) -> None:
        await pulled(api, headers, f"{registry.host}/{REPOSITORY}")  # :latest implied
        got = await api.get(f"/images/{registry.host}/{REPOSITORY}", headers=headers)
        assert got.status_code == 200 and got.json()["name"] == f"{registry.host}/{REPOSITORY}:latest"
        assert (await api.get("/images/busybox", headers=headers)).status_code == 404


def sse_frames(text: str) -> list[tuple[str, Json]]:
    frames = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            frames.append((fields["event"], json.loads(fields["data"])))
    return frames


class TestPullProgress:
    async def test_progress_then_done(self, api: httpx.AsyncClient, headers: dict[str, str],
                                      registry: Registry) -> None:
        reference = f"{registry.host}/{REPOSITORY}:two"
        response = await api.post("/images/pull", json={"reference": reference, "plain_http": True},
                                  headers={**headers, "Accept": "text/event-stream"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = sse_frames(response.text)
        kinds = [kind for kind, _ in frames]
        assert kinds[0] == "resolved" and kinds[-1] == "done"
        raw = registry.raw_manifest(reference)
        manifest = json.loads(raw)
        assert frames[0][1]["target"]["digest"] == f"sha256:{hashlib.sha256(raw).hexdigest()}"
        last = {data["digest"]: (data["bytes"], data["total"]) for kind, data in frames if kind == "progress"}
        blobs = [manifest["config"], *manifest["layers"]]
        assert last == {blob["digest"]: (blob["size"], blob["size"]) for blob in blobs}
        unpacked = [data for kind, data in frames if kind == "unpacked"]
        assert [data["chain_id"] for data in unpacked] == chain_ids(diff_ids_of(registry, "two"))
        assert [data["reused"] for data in unpacked] == [False, False, False]
        done = frames[-1][1]
        assert done == (await api.get(f"/images/{reference}", headers=headers)).json()

    async def test_failure_is_an_error_event_and_no_image(self, api: httpx.AsyncClient, headers: dict[str, str],
                                                          registry: Registry) -> None:
        response = await api.post("/images/pull", json={"reference": f"{registry.host}/{REPOSITORY}:nope",
                                                        "plain_http": True},
                                  headers={**headers, "Accept": "text/event-stream"})
        assert response.status_code == 200
        [(kind, problem)] = sse_frames(response.text)
        assert kind == "error"
        assert problem["status"] == 404 and problem["type"] == "urn:cargohold:problem:not-found"
        assert "not found" in problem["detail"]
        assert await image_names(api, headers) == []


class TestPullAuthAndTransport:
    async def test_basic_credentials(self, api: httpx.AsyncClient, headers: dict[str, str],
                                     auth_registry: Registry) -> None:
        reference = f"{auth_registry.host}/{REPOSITORY}:latest"
        anonymous = await pull(api, headers, reference)
        assert anonymous.status_code == 401
        wrong = await pull(api, headers, reference, credentials={"username": USERNAME, "password": "wrong-secret"})
        assert wrong.status_code == 401
        assert "wrong-secret" not in wrong.text
        assert await image_names(api, headers) == []
        image = await pulled(api, headers, reference, credentials={"username": USERNAME, "password": PASSWORD})
        assert image["name"] == reference
        history = (await api.get("/events/history", params={"limit": 1000})).text
        assert PASSWORD not in history and "wrong-secret" not in history

    async def test_insecure_registry_flag_allows_plain_http(self, settings: Settings, headers: dict[str, str],
                                                            registry: Registry) -> None:
        reference = f"{registry.host}/{REPOSITORY}:latest"
        body = {"reference": reference}
        async with in_process_client(settings) as api:
            refused = await api.post("/images/pull", json=body, headers=headers)
            assert refused.status_code == 503
            assert "does not speak TLS" in refused.json()["detail"]
        async with in_process_client(replace(settings, insecure_registries=(registry.host,))) as api:
            response = await api.post("/images/pull", json=body, headers=headers)
            assert response.status_code == 201, response.text


class TestPullOptions:
    async def test_platform_of_a_plain_manifest_is_checked(self, api: httpx.AsyncClient, headers: dict[str, str],
                                                            registry: Registry) -> None:
        response = await pull(api, headers, f"{registry.host}/{REPOSITORY}:latest", platform="linux/arm64")
        assert response.status_code == 400
        assert "is for platform linux/amd64, not linux/arm64" in response.json()["detail"]
        assert await image_names(api, headers) == [] and await snapshots(api, headers) == {}

    async def test_without_unpack_there_are_no_snapshots_and_no_container(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry) -> None:
        reference = f"{registry.host}/{REPOSITORY}:latest"
        image = await pulled(api, headers, reference, unpack=False)
        assert image["name"] == reference
        assert await snapshots(api, headers) == {}
        response = await api.post("/containers", json={"id": "web", "image": reference}, headers=headers)
        assert response.status_code == 422
        assert "are not unpacked" in response.json()["detail"]
        assert (await api.get("/containers", headers=headers)).json()["containers"] == []
        assert await snapshots(api, headers) == {}

    async def test_unknown_snapshotter_is_refused_before_any_download(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry) -> None:
        manifest = json.loads(registry.raw_manifest(f"{registry.host}/{REPOSITORY}:latest"))
        gets = registry.blob_gets(manifest["layers"][0]["digest"])
        response = await pull(api, headers, f"{registry.host}/{REPOSITORY}:latest", snapshotter="zfs")
        assert response.status_code == 400 and "unknown snapshotter" in response.json()["detail"]
        assert registry.blob_gets(manifest["layers"][0]["digest"]) == gets
        assert await image_names(api, headers) == []


class TestPullAbandoned:
    async def test_closing_the_progress_stream_abandons_the_pull(self, settings: Settings, tmp_path: Path) -> None:
        """A registry that takes 3 s over the layer: the client leaves after `resolved`, and
        3 s later there is still no image (the pull was cancelled, not finished behind it)."""
        tar = files_tar({"etc/slow": b"slow\n"})
        blob = gzip.compress(tar)
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]}}).encode()
        digest = {data: f"sha256:{hashlib.sha256(data).hexdigest()}" for data in (blob, config)}
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, "digest": digest[config], "size": len(config)},
                               "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": digest[blob],
                                           "size": len(blob)}]}).encode()
        layer_asked = threading.Event()

        def handle(seen: Seen) -> Reply:
            if seen.path.endswith("/manifests/v1"):
                return Reply(200, {"Content-Type": OCI_MANIFEST,
                                   "Docker-Content-Digest": f"sha256:{hashlib.sha256(manifest).hexdigest()}"},
                             manifest)
            if seen.path.endswith(digest[config]):
                return Reply(200, {}, config)
            if seen.path.endswith(digest[blob]):
                layer_asked.set()
                time.sleep(3)
                return Reply(200, {}, blob)
            return Reply(404)

        with HttpServer(handle) as server:
            reference = f"{server.host}/slow/image:v1"
            async with running_server(settings), uds_client(settings, timeout=30) as client:
                headers = {"Accept": "text/event-stream"}
                body = {"reference": reference, "plain_http": True}
                async with client.stream("POST", "/images/pull", json=body, headers=headers) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line == "event: resolved":
                            break
                await asyncio.to_thread(layer_asked.wait, 5)
                await asyncio.sleep(4)
                assert await image_names(client, {}) == []
                assert await snapshots(client, {}) == {}
