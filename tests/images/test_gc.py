"""Garbage collection against real pulls from the test registry: what an image, a container or
a lease reaches stays; what nothing reaches goes, with its events; a failed pull leaves
nothing once GC has run; and GC racing a retried pull never takes the parent it reuses."""

from __future__ import annotations

import gzip
import hashlib
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.daemon import open_daemon
from app.images.descriptors import OCI_LAYER_GZIP
from app.images.unpack import chain_ids
from app.models import ImagePull
from tests.images.conftest import (
    REPOSITORY,
    OneLayerImage,
    Registry,
    blobs,
    diff_ids_of,
    ingests,
    pull,
    pulled,
    push_image,
    snapshot_dirs,
    snapshots,
)
from tests.rootfs import files_tar

pytestmark = [pytest.mark.anyio, pytest.mark.registry]

Json = dict[str, Any]


def image_blobs(registry: Registry, tag: str, repository: str = REPOSITORY) -> set[str]:
    """The manifest, config and layer digests of a tag in the registry."""
    raw = registry.raw_manifest(f"{registry.host}/{repository}:{tag}")
    manifest = httpx.Response(200, content=raw).json()
    return ({f"sha256:{hashlib.sha256(raw).hexdigest()}", manifest["config"]["digest"]}
            | {layer["digest"] for layer in manifest["layers"]})


async def gc(api: httpx.AsyncClient) -> Json:
    response = await api.post("/gc")
    assert response.status_code == 200, response.text
    result: Json = response.json()
    return result


async def events(api: httpx.AsyncClient, topic: str) -> list[Json]:
    history = await api.get("/events/history", params={"limit": 1000, "filter": f'topic=="{topic}"'})
    assert history.status_code == 200, history.text
    found: list[Json] = history.json()["events"]
    return found


class TestCollect:
    async def test_what_images_reach_stays(self, api: httpx.AsyncClient, headers: dict[str, str],
                                           registry: Registry, settings: Settings) -> None:
        await pulled(api, headers, f"{registry.host}/{REPOSITORY}:two")
        before = (blobs(settings), set(await snapshots(api, headers)), snapshot_dirs(settings))
        result = await gc(api)
        assert (result["content"], result["snapshots"], result["ingests"]) == ([], [], 0)
        assert (blobs(settings), set(await snapshots(api, headers)), snapshot_dirs(settings)) == before
        assert blobs(settings) == image_blobs(registry, "two")

    async def test_deleting_the_image_reclaims_its_content_and_chain(
            self, api: httpx.AsyncClient, headers: dict[str, str], namespace: str, registry: Registry,
            settings: Settings) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:two")
        chain = chain_ids(diff_ids_of(registry, "two"))
        assert (await api.delete(f"/images/{image['name']}", headers=headers)).status_code == 204
        await gc(api)  # the delete scheduled one already; this one waits for it, then finds nothing more
        assert blobs(settings) == set()
        assert await snapshots(api, headers) == {}
        assert snapshot_dirs(settings) == set()
        removed = {(e["namespace"], e["event"]["key"]) for e in await events(api, "/snapshot/remove")}
        assert removed == {(namespace, key) for key in chain}
        deleted = {e["event"]["digest"] for e in await events(api, "/content/delete")}
        assert deleted == image_blobs(registry, "two")

    async def test_shared_layers_stay_while_another_image_needs_them(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, settings: Settings) -> None:
        await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        two = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:two")
        assert (await api.delete(f"/images/{two['name']}", headers=headers)).status_code == 204
        await gc(api)
        assert blobs(settings) == image_blobs(registry, "latest")
        assert list(await snapshots(api, headers)) == chain_ids(diff_ids_of(registry, "latest"))
        assert len(snapshot_dirs(settings)) == 1

    async def test_a_container_keeps_the_chain_under_its_snapshot(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, settings: Settings) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:two")
        chain = chain_ids(diff_ids_of(registry, "two"))
        created = await api.post("/containers", json={"id": "web", "image": image["name"]}, headers=headers)
        assert created.status_code == 201, created.text
        assert (await api.delete(f"/images/{image['name']}", headers=headers)).status_code == 204
        result = await gc(api)
        assert blobs(settings) == set()  # content is reached by images only
        assert set(await snapshots(api, headers)) == {*chain, "web"}
        assert result["snapshots"] == []
        assert (await api.delete("/containers/web", headers=headers)).status_code == 204
        await gc(api)
        assert await snapshots(api, headers) == {}
        assert snapshot_dirs(settings) == set()

    async def test_a_users_snapshot_on_a_chain_keeps_it(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, settings: Settings) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        (chain_id,) = chain_ids(diff_ids_of(registry, "latest"))
        made = await api.post("/snapshots", json={"key": "mine", "parent": chain_id}, headers=headers)
        assert made.status_code == 201, made.text
        assert (await api.delete(f"/images/{image['name']}", headers=headers)).status_code == 204
        await gc(api)
        assert set(await snapshots(api, headers)) == {chain_id, "mine"}
        assert (await api.delete("/snapshots/mine", headers=headers)).status_code == 204
        await gc(api)
        assert await snapshots(api, headers) == {}


    async def test_chain_snapshots_are_addressed_by_their_chain_id(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry) -> None:
        await pulled(api, headers, f"{registry.host}/{REPOSITORY}:two")
        bottom, *_, top = chain_ids(diff_ids_of(registry, "two"))
        got = await api.get(f"/snapshots/{top}", headers=headers)
        assert got.status_code == 200, got.text
        assert got.json()["kind"] == "committed" and got.json()["parent"] is not None
        refused = await api.delete(f"/snapshots/{bottom}", headers=headers)
        assert refused.status_code == 409, refused.text
        assert "parent" in refused.json()["detail"]
        bad = await api.get("/snapshots/sha256:0123", headers=headers)
        assert bad.status_code == 400, bad.text


class TestFailedPulls:
    async def test_a_pull_failing_at_its_second_layer_leaves_nothing_once_gc_has_run(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, settings: Settings) -> None:
        good, bad = files_tar({"etc/good": b"good\n"}), files_tar({"etc/bad": b"bad\n"})
        push_image(registry, "test/gc-half", "v1",
                   [(good, gzip.compress(good), OCI_LAYER_GZIP), (bad, gzip.compress(bad), OCI_LAYER_GZIP)],
                   diff_ids=[f"sha256:{hashlib.sha256(good).hexdigest()}", "sha256:" + "cd" * 32])
        response = await pull(api, headers, f"{registry.host}/test/gc-half:v1")
        assert response.status_code == 400, response.text
        left = set(await snapshots(api, headers))
        assert left == {f"sha256:{hashlib.sha256(good).hexdigest()}"}  # the first layer was unpacked
        assert blobs(settings)  # and the blobs fetched
        result = await gc(api)
        assert [s["key"] for s in result["snapshots"]] == list(left)
        assert blobs(settings) == set() and ingests(settings) == []
        assert await snapshots(api, headers) == {} and snapshot_dirs(settings) == set()

    async def test_a_registry_stopping_mid_blob_leaves_an_ingest_that_gc_removes(
            self, api: httpx.AsyncClient, headers: dict[str, str], settings: Settings) -> None:
        tar = files_tar({"etc/big": hashlib.sha256(b"x").digest() * 20_000})
        blob = gzip.compress(tar)
        with OneLayerImage(tar, blob, cut_after=len(blob) // 2) as image:
            response = await pull(api, headers, image.reference)
            assert response.status_code == 503, response.text
            assert "blob" in response.json()["detail"]
        assert len(ingests(settings)) == 1  # kept for a resume
        result = await gc(api)
        assert result["ingests"] == 1
        assert ingests(settings) == [] and blobs(settings) == set()


class TestRaces:
    async def test_gc_between_the_layers_of_a_retried_pull_keeps_the_reused_parent(
            self, namespace: str, registry: Registry, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
        """containerd users see "parent snapshot does not exist" when GC runs while a retried
        pull reuses a layer an earlier, failed pull unpacked. Here a real collection runs at
        exactly that point (before the second layer is applied on the reused first one)."""
        good, second, bad = (files_tar({f"etc/{n}": n.encode()}) for n in ("base", "second", "bad"))
        push_image(registry, "test/gc-race", "broken",
                   [(good, gzip.compress(good), OCI_LAYER_GZIP), (bad, gzip.compress(bad), OCI_LAYER_GZIP)],
                   diff_ids=[f"sha256:{hashlib.sha256(good).hexdigest()}", "sha256:" + "ef" * 32])
        push_image(registry, "test/gc-race", "fixed",
                   [(good, gzip.compress(good), OCI_LAYER_GZIP), (second, gzip.compress(second), OCI_LAYER_GZIP)])
        base = f"sha256:{hashlib.sha256(good).hexdigest()}"
        async with open_daemon(settings) as daemon:
            with pytest.raises(Exception, match="diff id"):
                await daemon.images.pull(namespace, ImagePull(reference=f"{registry.host}/test/gc-race:broken",
                                                              plain_http=True))
            collected = []
            import_layer = daemon.snapshots.import_layer

            async def collect_first(namespace: str, snapshotter: str | None, chain_id: str, parent: str | None,
                                    *rest: Any) -> Any:
                if parent is not None:
                    collected.append(await daemon.collector.collect())
                return await import_layer(namespace, snapshotter, chain_id, parent, *rest)

            monkeypatch.setattr(daemon.snapshots, "import_layer", collect_first)
            image, created = await daemon.images.pull(
                namespace, ImagePull(reference=f"{registry.host}/test/gc-race:fixed", plain_http=True))
            assert created
            (result,) = collected
            assert base not in [s.key for s in result.snapshots]
            assert image_blobs(registry, "fixed", "test/gc-race") <= blobs(settings)
            # and afterwards the image holds what the lease held
            after = await daemon.collector.collect()
            assert after.snapshots == [] and after.content == []
