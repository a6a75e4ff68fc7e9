"""Import and export of images through the API: OCI layout tars and docker save archives made by
skopeo and umoci (and by hand where a fault is wanted), exports read back by skopeo and umoci, a
round trip, and every refused archive leaving no image, no ingest and no spool file."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import stat
import tarfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import zstandard

from app.config import Listener, Settings
from app.images.archive import IMAGE_NAME_ANNOTATION, REF_NAME_ANNOTATION
from app.images.descriptors import DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST
from app.images.unpack import DOCKER_LAYER, chain_ids
from tests.conftest import in_process_client, leftovers, running_server, uds_client
from tests.images.conftest import (
    REPOSITORY,
    Registry,
    files_of,
    image_events,
    image_names,
    pulled,
    require_registry_tools,
    run,
    snapshots,
)
from tests.rootfs import files_tar

pytestmark = [pytest.mark.anyio, pytest.mark.registry]

Json = dict[str, Any]
NAME = "example.com/app:v1"


async def import_archive(api: httpx.AsyncClient, headers: dict[str, str], body: bytes, **params: str) -> httpx.Response:
    return await api.post("/images/import", content=body, params=params, headers=headers)


async def imported(api: httpx.AsyncClient, headers: dict[str, str], body: bytes, **params: str) -> list[Json]:
    response = await import_archive(api, headers, body, **params)
    assert response.status_code == 201, response.text
    images: list[Json] = response.json()
    return images


async def exported(api: httpx.AsyncClient, headers: dict[str, str], name: str) -> bytes:
    response = await api.get(f"/images/{name}/export", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert int(response.headers["content-length"]) == len(response.content)
    return response.content


def skopeo_archive(layout: Path, tag: str, transport: str, destination: Path, name: str | None = None) -> bytes:
    """`skopeo copy oci:<layout>:<tag> <transport>:<destination>[:<name>]`; the archive's bytes."""
    target = f"{transport}:{destination}" + (f":{name}" if name else "")
    run("skopeo", "--insecure-policy", "copy", "-q", f"oci:{layout}:{tag}", target)
    return destination.read_bytes()


def tar_of_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(directory.rglob("*")):
            archive.add(path, str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


def members_of(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
                for m in archive.getmembers() if m.isfile()}


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def layout_files(layers: list[bytes], *, media_type: str = OCI_LAYER, diff_ids: list[str] | None = None,
                 annotations: dict[str, str] | None = None) -> dict[str, bytes]:
    """An OCI image layout (name -> bytes) of plain tar `layers` under a minimal config, its one
    index.json entry annotated with `annotations` (default: named NAME)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha256(t) for t in layers]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                           "layers": [{"mediaType": media_type, "digest": sha256(t), "size": len(t)}
                                      for t in layers]}).encode()
    entry = {"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest),
             "annotations": {IMAGE_NAME_ANNOTATION: NAME} if annotations is None else annotations}
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()}
    for blob in (config, manifest, *layers):
        files[f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}"] = blob
    return files


def blob_name(data: bytes) -> str:
    return f"blobs/sha256/{hashlib.sha256(data).hexdigest()}"


def docker_save(images: list[tuple[list[str], list[str]]], layers: dict[str, bytes],
                links: dict[str, str] | None = None) -> bytes:
    """A docker save archive in the legacy layout: `layers` (member name -> tar), `links`
    (member name -> symlink target, as docker links a layer it saved before), each image
    (tags, its layers' member names) with a config `<hex>.json`, and manifest.json last."""
    buffer = io.BytesIO()
    manifest = []
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        for name, data in layers.items():
            add(name, data)
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
        resolved = {**layers, **{name: layers.get(posixpath.normpath(posixpath.join(posixpath.dirname(name), target)),
                                                  b"") for name, target in (links or {}).items()}}
        for tags, members in images:
            config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]}, "rootfs": {
                "type": "layers", "diff_ids": [sha256(resolved[m]) for m in members]}}).encode()
            add(f"{hashlib.sha256(config).hexdigest()}.json", config)
            manifest.append({"Config": f"{hashlib.sha256(config).hexdigest()}.json", "RepoTags": tags,
                             "Layers": members})
        add("manifest.json", json.dumps(manifest).encode())
    return buffer.getvalue()


def nothing_left(settings: Settings) -> None:
    """No ingest in the content store, and the spool directory (if made) private and empty."""
    ingest = settings.root / "content" / "ingest"
    assert not ingest.exists() or list(ingest.iterdir()) == []
    spool = settings.root / "spool"
    if spool.exists():
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700
        assert list(spool.iterdir()) == []


class TestImport:
    async def test_skopeo_oci_archive_is_imported_named_and_unpacked(
            self, api: httpx.AsyncClient, headers: dict[str, str], namespace: str, oci_layout: Path,
            settings: Settings, tmp_path: Path) -> None:
        body = skopeo_archive(oci_layout, "latest", "oci-archive", tmp_path / "app.tar", NAME)
        index = json.loads(members_of(body)["index.json"])
        (entry,) = index["manifests"]
        manifest = json.loads(members_of(body)[f"blobs/sha256/{entry['digest'].split(':')[1]}"])
        (image,) = await imported(api, headers, body)
        assert image["name"] == NAME
        assert image["target"] == {"media_type": OCI_MANIFEST, "digest": entry["digest"], "size": entry["size"]}
        assert image["config_digest"] == manifest["config"]["digest"]
        assert image["platforms"] == ["linux/amd64"]
        assert image["size"] == entry["size"] + manifest["config"]["size"] + sum(x["size"] for x in manifest["layers"])
        config = (await api.get(f"/images/{NAME}/config", headers=headers)).json()
        assert config["config"]["Cmd"] == ["/bin/sh"]
        (chain_id,) = chain_ids(config["rootfs"]["diff_ids"])
        assert (await snapshots(api, headers))[chain_id]["kind"] == "committed"
        for blob in (entry, manifest["config"], *manifest["layers"]):
            assert (await api.get(f"/content/{blob['digest']}/info")).status_code == 200
        assert await image_events(api, namespace) == [("/images/create", NAME)]
        nothing_left(settings)

    async def test_umoci_layout_with_bare_tags_is_named_by_the_name_parameter(
            self, api: httpx.AsyncClient, headers: dict[str, str], oci_layout: Path, settings: Settings,
            tmp_path: Path) -> None:
        body = gzip.compress(tar_of_directory(oci_layout))  # compressed: sniffed from the bytes
        refused = await import_archive(api, headers, body)
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert "tagged 'latest' but names no repository; give name=REPOSITORY" in refused.json()["detail"]
        assert await image_names(api, headers) == []
        images = await imported(api, headers, body, name="example.com/bb")
        assert [i["name"] for i in images] == ["example.com/bb:latest", "example.com/bb:two"]
        # `two` has 3 layers: + /etc/hello, then a whiteout of /etc/group
        config = (await api.get("/images/example.com/bb:two/config", headers=headers)).json()
        top = chain_ids(config["rootfs"]["diff_ids"])[-1]
        files = await files_of(api, headers, top, tmp_path)
        assert "etc/hello" in files and "etc/group" not in files and "bin/busybox" in files
        nothing_left(settings)

    async def test_docker_save_archive_becomes_a_docker_schema2_image(
            self, api: httpx.AsyncClient, headers: dict[str, str], namespace: str, oci_layout: Path,
            settings: Settings, tmp_path: Path) -> None:
        body = skopeo_archive(oci_layout, "two", "docker-archive", tmp_path / "two.tar", "example.com/app:two")
        saved = members_of(body)
        (entry,) = json.loads(saved["manifest.json"])
        assert entry["RepoTags"] == ["example.com/app:two"]
        # zstd: sniffed from the bytes like gzip
        (image,) = await imported(api, headers, zstandard.ZstdCompressor().compress(body))
        assert image["name"] == "example.com/app:two"
        assert image["target"]["media_type"] == DOCKER_MANIFEST
        manifest_response = await api.get(f"/content/{image['target']['digest']}")
        assert manifest_response.status_code == 200
        manifest = json.loads(manifest_response.content)
        assert manifest["mediaType"] == DOCKER_MANIFEST
        assert manifest["config"] == {"mediaType": DOCKER_CONFIG, "digest": sha256(saved[entry["Config"]]),
                                      "size": len(saved[entry["Config"]])}
        assert manifest["layers"] == [{"mediaType": DOCKER_LAYER, "digest": sha256(saved[name]),
                                       "size": len(saved[name])} for name in entry["Layers"]]
        assert image["config_digest"] == sha256(saved[entry["Config"]])
        diff_ids = json.loads(saved[entry["Config"]])["rootfs"]["diff_ids"]
        assert len(diff_ids) == 3
        files = await files_of(api, headers, chain_ids(diff_ids)[-1], tmp_path)
        assert "etc/hello" in files and "etc/group" not in files
        assert await image_events(api, namespace) == [("/images/create", "example.com/app:two")]
        nothing_left(settings)

    async def test_docker_save_without_tags_takes_the_name_given(
            self, api: httpx.AsyncClient, headers: dict[str, str], oci_layout: Path, tmp_path: Path) -> None:
        body = skopeo_archive(oci_layout, "latest", "docker-archive", tmp_path / "untagged.tar")
        refused = await import_archive(api, headers, body)
        assert refused.status_code == 400, refused.text
        assert "has no name; give name=NAME" in refused.json()["detail"]
        (image,) = await imported(api, headers, body, name="local/untagged")
        assert image["name"] == "docker.io/local/untagged:latest"

    async def test_docker_save_with_a_linked_layer_and_its_manifest_last(
            self, api: httpx.AsyncClient, headers: dict[str, str], namespace: str, settings: Settings) -> None:
        base, top = files_tar({"base": b"1\n"}), files_tar({"top": b"2\n"})
        body = docker_save([(["example.com/a:1"], ["l0/layer.tar"]),
                            (["example.com/b:1", "example.com/b:latest"], ["l1/layer.tar", "l2/layer.tar"])],
                           {"l0/layer.tar": base, "l2/layer.tar": top}, {"l1/layer.tar": "../l0/layer.tar"})
        images = await imported(api, headers, body)
        assert [i["name"] for i in images] == ["example.com/a:1", "example.com/b:1", "example.com/b:latest"]
        assert images[1]["target"] == images[2]["target"]
        manifest = json.loads((await api.get(f"/content/{images[1]['target']['digest']}")).content)
        assert [layer["digest"] for layer in manifest["layers"]] == [sha256(base), sha256(top)]
        chain = chain_ids([sha256(base), sha256(top)])
        assert set(chain) <= set(await snapshots(api, headers))
        assert await image_events(api, namespace) == [
            ("/images/create", "example.com/a:1"), ("/images/create", "example.com/b:1"),
            ("/images/create", "example.com/b:latest")]
        nothing_left(settings)

    async def test_importing_a_name_again_updates_it(
            self, api: httpx.AsyncClient, headers: dict[str, str], namespace: str) -> None:
        first = await imported(api, headers, files_tar(layout_files([files_tar({"a": b"1"})])))
        second = await imported(api, headers, files_tar(layout_files([files_tar({"a": b"2"})])))
        assert first[0]["name"] == second[0]["name"] == NAME
        assert first[0]["target"] != second[0]["target"]
        assert await image_events(api, namespace) == [("/images/create", NAME), ("/images/update", NAME)]


class TestImportRefused:
    """Each refused archive: a problem+json naming the cause, no image, no ingest, no spool file."""

    @staticmethod
    async def refused(api: httpx.AsyncClient, headers: dict[str, str], settings: Settings, body: bytes,
                      status: int, cause: str, **params: str) -> Json:
        response = await import_archive(api, headers, body, **params)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem: Json = response.json()
        assert cause in problem["detail"], problem
        assert await image_names(api, headers) == []
        nothing_left(settings)
        return problem

    async def test_not_a_tar(self, api: httpx.AsyncClient, headers: dict[str, str], settings: Settings) -> None:
        await self.refused(api, headers, settings, b"this is not an archive\n" * 100, 400, "not a readable tar")
        await self.refused(api, headers, settings, b"tiny", 400, "not a tar archive")

    async def test_bad_name_parameter(self, api: httpx.AsyncClient, headers: dict[str, str],
                                      settings: Settings) -> None:
        body = files_tar(layout_files([files_tar({"a": b"1"})], annotations={REF_NAME_ANNOTATION: "latest"}))
        await self.refused(api, headers, settings, body, 400, "must be lowercase", name="Example.com/App")

    async def test_a_tar_of_something_else(self, api: httpx.AsyncClient, headers: dict[str, str],
                                           settings: Settings) -> None:
        await self.refused(api, headers, settings, files_tar({"etc/passwd": b"root:x:0:0::/:/bin/sh\n"}), 400,
                           "neither an OCI image layout (no index.json) nor a docker save archive")

    async def test_truncated_tar(self, api: httpx.AsyncClient, headers: dict[str, str], settings: Settings) -> None:
        layer = files_tar({"big": os.urandom(200_000)})
        files = layout_files([layer])
        body = files_tar({name: files[name] for name in ("oci-layout", "index.json", blob_name(layer))})
        await self.refused(api, headers, settings, body[:len(body) // 2], 400, "truncated")

    async def test_gzip_garbage(self, api: httpx.AsyncClient, headers: dict[str, str], settings: Settings) -> None:
        body = gzip.compress(files_tar(layout_files([files_tar({"a": b"1"})])))
        await self.refused(api, headers, settings, body[:20] + os.urandom(200) + body[220:], 400, "gzip data is broken")
        await self.refused(api, headers, settings, body[: len(body) - 30], 400, "gzip data is broken or truncated")

    async def test_missing_blob(self, api: httpx.AsyncClient, headers: dict[str, str], settings: Settings) -> None:
        layer = files_tar({"a": b"1"})
        files = layout_files([layer])
        del files[blob_name(layer)]
        await self.refused(api, headers, settings, files_tar(files), 400, f"the archive has no blob {sha256(layer)}")

    async def test_blob_whose_digest_is_not_its_descriptors(
            self, api: httpx.AsyncClient, headers: dict[str, str], settings: Settings) -> None:
        layer = files_tar({"a": b"1" * 1000})
        files = layout_files([layer])
        files[blob_name(layer)] = layer.replace(b"1" * 1000, b"2" * 1000)  # same size, other bytes
        await self.refused(api, headers, settings, files_tar(files), 400, f"blob {sha256(layer)} in the archive has "
                           "digest")
        assert not (settings.root / "content" / "blobs" / "sha256" / sha256(layer).split(":")[1]).exists()

    async def test_blob_whose_size_is_not_its_descriptors(
            self, api: httpx.AsyncClient, headers: dict[str, str], settings: Settings) -> None:
        layer = files_tar({"a": b"1"})
        files = layout_files([layer])
        files[blob_name(layer)] = layer + bytes(512)
        await self.refused(api, headers, settings, files_tar(files), 400, "but its descriptor says")

    async def test_docker_save_member_whose_digest_is_not_its_name(
            self, api: httpx.AsyncClient, headers: dict[str, str], settings: Settings) -> None:
        layer = files_tar({"a": b"1"})
        misnamed = f"blobs/sha256/{hashlib.sha256(b'something else').hexdigest()}"
        await self.refused(api, headers, settings, docker_save([(["example.com/a:1"], [misnamed])], {misnamed: layer}),
                           400, "not the one its name says")

    async def test_docker_save_layer_that_is_missing(
            self, api: httpx.AsyncClient, headers: dict[str, str], settings: Settings) -> None:
        # l1/layer.tar is a link to itself: followed a few hops, then missing
        body = docker_save([(["example.com/a:1"], ["l0/layer.tar", "l1/layer.tar"])],
                           {"l0/layer.tar": files_tar({"a": b"1"})}, {"l1/layer.tar": "../l1/layer.tar"})
        await self.refused(api, headers, settings, body, 400, "the archive has no file 'l1/layer.tar'")

    async def test_unknown_layer_media_type(self, api: httpx.AsyncClient, headers: dict[str, str],
                                            settings: Settings) -> None:
        files = layout_files([files_tar({"a": b"1"})], media_type="application/vnd.example.mystery")
        await self.refused(api, headers, settings, files_tar(files), 400, "'application/vnd.example.mystery', "
                           "which Cargohold does not unpack")

    async def test_unknown_target_media_type(self, api: httpx.AsyncClient, headers: dict[str, str],
                                             settings: Settings) -> None:
        files = layout_files([files_tar({"a": b"1"})])
        index = json.loads(files["index.json"])
        index["manifests"][0]["mediaType"] = "application/vnd.example.thing+json"
        files["index.json"] = json.dumps(index).encode()
        await self.refused(api, headers, settings, files_tar(files), 400, "not an image manifest or index")

    async def test_layer_escaping_its_root(self, api: httpx.AsyncClient, headers: dict[str, str],
                                           settings: Settings) -> None:
        evil = files_tar({"../escaped": b"out\n"})
        problem = await self.refused(api, headers, settings, files_tar(layout_files([evil])), 400,
                                     "climbs out of the root with '..'")
        assert problem["status"] == 400
        assert not (settings.root / "escaped").exists()
        assert await snapshots(api, headers) == {}

    async def test_what_a_failed_import_stored_is_collected(
            self, api: httpx.AsyncClient, headers: dict[str, str], settings: Settings) -> None:
        good, evil = files_tar({"fine": b"1\n"}), files_tar({"../escaped": b"out\n"})
        await self.refused(api, headers, settings, files_tar(layout_files([good, evil])), 400,
                           "a layer was refused: tar member '../escaped' climbs out of the root")
        assert sha256(good) in await snapshots(api, headers)  # the layer below, until a collection
        collected = await api.post("/gc")
        assert collected.status_code == 200, collected.text
        assert sha256(good) in collected.json()["content"]
        assert await snapshots(api, headers) == {}
        assert list((settings.root / "content" / "blobs" / "sha256").iterdir()) == []

    async def test_oversize_body_and_gzip_bomb(self, settings: Settings, headers: dict[str, str]) -> None:
        small = replace(settings, import_max_bytes=64 * 1024)
        async with in_process_client(small) as api:
            big = files_tar(layout_files([files_tar({"big": os.urandom(100_000)})]))
            await self.refused(api, headers, small, big, 413, "larger than the 65536-byte import limit")
            bomb = gzip.compress(files_tar(layout_files([files_tar({"zeros": bytes(1024 * 1024)})])))
            assert len(bomb) < 64 * 1024
            await self.refused(api, headers, small, bomb, 413, "once decompressed")

    async def test_too_many_members(self, settings: Settings, headers: dict[str, str]) -> None:
        few = replace(settings, import_archive_max_members=3)
        async with in_process_client(few) as api:
            body = files_tar(layout_files([files_tar({"a": b"1"}), files_tar({"b": b"2"})]))
            await self.refused(api, headers, few, body, 413, "more than 3 members")

    async def test_upload_that_stalls(self, settings: Settings, headers: dict[str, str]) -> None:
        impatient = replace(settings, import_idle_timeout=0.3)
        stalled = anyio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield files_tar(layout_files([files_tar({"a": b"1"})]))[:1024]
            await stalled.wait()  # never set: the upload sends nothing more

        async with in_process_client(impatient) as api:
            response = await api.post("/images/import", content=body(), headers=headers)
            assert response.status_code == 400, response.text
            assert "sent nothing for 0.3 seconds" in response.json()["detail"]
            assert await image_names(api, headers) == []
            nothing_left(impatient)


class TestExport:
    async def test_export_is_read_by_skopeo_and_umoci(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, tmp_path: Path) -> None:
        reference = f"{registry.host}/{REPOSITORY}:latest"
        image = await pulled(api, headers, reference)
        archive = tmp_path / "export.tar"
        archive.write_bytes(await exported(api, headers, reference))
        inspected = json.loads(run("skopeo", "inspect", f"oci-archive:{archive}"))
        assert inspected["Digest"] == image["target"]["digest"]
        copied = tmp_path / "copied"
        run("skopeo", "--insecure-policy", "copy", "-q", f"oci-archive:{archive}", f"dir:{copied}")
        assert sha256((copied / "manifest.json").read_bytes()) == image["target"]["digest"]
        layout = tmp_path / "layout"
        layout.mkdir()
        run("tar", "-C", layout, "-xf", archive)
        index = json.loads((layout / "index.json").read_text())
        (entry,) = index["manifests"]
        assert index["mediaType"] == OCI_INDEX
        assert entry["annotations"] == {IMAGE_NAME_ANNOTATION: reference, REF_NAME_ANNOTATION: "latest"}
        assert "latest" in run("umoci", "list", "--layout", layout).split()
        stat_out = run("umoci", "stat", "--image", f"{layout}:latest", "--json")
        assert len(json.loads(stat_out)["history"]) >= 1
        run("umoci", "unpack", "--image", f"{layout}:latest", tmp_path / "bundle")
        assert (tmp_path / "bundle" / "rootfs" / "bin" / "busybox").is_file()

    async def test_index_pulled_for_one_platform_exports_that_manifest(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, tmp_path: Path) -> None:
        reference = f"{registry.host}/{REPOSITORY}:multi"
        image = await pulled(api, headers, reference)
        assert image["target"]["media_type"] == OCI_INDEX
        files = members_of(await exported(api, headers, reference))
        (entry,) = json.loads(files["index.json"])["manifests"]
        latest = registry.raw_manifest(f"{registry.host}/{REPOSITORY}:latest")
        assert (entry["mediaType"], entry["digest"]) == (OCI_MANIFEST, sha256(latest))
        assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
        assert entry["annotations"][IMAGE_NAME_ANNOTATION] == reference
        assert blob_name(latest) in files and f"blobs/sha256/{image['target']['digest'].split(':')[1]}" not in files
        for name, data in files.items():  # every blob is what its name says
            if name.startswith("blobs/"):
                assert name == blob_name(data)
        archive = tmp_path / "multi.tar"
        archive.write_bytes(tar_of(files))
        assert json.loads(run("skopeo", "inspect", f"oci-archive:{archive}"))["Digest"] == sha256(latest)

    async def test_imported_index_keeps_this_platform_as_a_pull_does(
            self, api: httpx.AsyncClient, headers: dict[str, str], oci_layout: Path) -> None:
        # An OCI layout whose index.json entry is an index of two manifests (amd64: latest, arm64: two).
        files = members_of(tar_of_directory(oci_layout))
        children = [dict(e, platform={"architecture": arch, "os": "linux"}) for e, arch in
                    zip(json.loads(files["index.json"])["manifests"], ("amd64", "arm64"), strict=True)]
        for child in children:
            child.pop("annotations", None)
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
        files[blob_name(index)] = index
        files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_INDEX, "digest": sha256(index), "size": len(index),
             "annotations": {REF_NAME_ANNOTATION: "example.com/multi:v1"}}]}).encode()
        (image,) = await imported(api, headers, files_tar(files))
        assert image["name"] == "example.com/multi:v1"
        assert image["target"] == {"media_type": OCI_INDEX, "digest": sha256(index), "size": len(index)}
        assert image["platforms"] == ["linux/amd64", "linux/arm64"]
        arm64 = children[1]["digest"]
        assert (await api.get(f"/content/{arm64}/info")).status_code == 404  # only the host's platform
        out = members_of(await exported(api, headers, image["name"]))
        (entry,) = json.loads(out["index.json"])["manifests"]
        assert (entry["mediaType"], entry["digest"]) == (OCI_MANIFEST, children[0]["digest"])

    async def test_whole_index_is_exported_whole(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, tmp_path: Path) -> None:
        reference = f"{registry.host}/{REPOSITORY}:multi"
        await pulled(api, headers, reference)
        image = await pulled(api, headers, reference, platform="linux/arm64")  # now both manifests are here
        files = members_of(await exported(api, headers, reference))
        (entry,) = json.loads(files["index.json"])["manifests"]
        assert (entry["mediaType"], entry["digest"]) == (OCI_INDEX, image["target"]["digest"])
        index = json.loads(files[f"blobs/sha256/{image['target']['digest'].split(':')[1]}"])
        for child in index["manifests"]:
            manifest = json.loads(files[f"blobs/sha256/{child['digest'].split(':')[1]}"])
            for blob in (manifest["config"], *manifest["layers"]):
                assert sha256(files[f"blobs/sha256/{blob['digest'].split(':')[1]}"]) == blob["digest"]
        archive = tmp_path / "whole.tar"
        archive.write_bytes(tar_of(files))
        assert json.loads(run("skopeo", "inspect", "--raw", f"oci-archive:{archive}")) == index

    async def test_docker_schema2_image_exports_for_skopeo(
            self, api: httpx.AsyncClient, headers: dict[str, str], oci_layout: Path, tmp_path: Path) -> None:
        body = skopeo_archive(oci_layout, "latest", "docker-archive", tmp_path / "save.tar", "example.com/d:1")
        (image,) = await imported(api, headers, body)
        archive = tmp_path / "export.tar"
        archive.write_bytes(await exported(api, headers, image["name"]))
        inspected = json.loads(run("skopeo", "inspect", f"oci-archive:{archive}"))
        assert inspected["Digest"] == image["target"]["digest"]

    async def test_missing_image_is_404(self, api: httpx.AsyncClient, headers: dict[str, str]) -> None:
        response = await api.get("/images/example.com/none:v1/export", headers=headers)
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"

    async def test_round_trip_keeps_name_manifest_and_config(
            self, api: httpx.AsyncClient, headers: dict[str, str], namespace: str, oci_layout: Path,
            tmp_path: Path) -> None:
        (image,) = await imported(api, headers, skopeo_archive(oci_layout, "two", "oci-archive",
                                                               tmp_path / "two.tar", NAME))
        config = (await api.get(f"/images/{NAME}/config", headers=headers)).json()
        tar = await exported(api, headers, NAME)
        assert tar == await exported(api, headers, NAME)  # the same bytes each time
        assert (await api.delete(f"/images/{NAME}", headers=headers)).status_code == 204
        (again,) = await imported(api, headers, tar)
        assert {k: again[k] for k in ("name", "target", "config_digest", "platforms", "size")} == \
            {k: image[k] for k in ("name", "target", "config_digest", "platforms", "size")}
        assert (await api.get(f"/images/{NAME}/config", headers=headers)).json() == config
        assert [topic for topic, _ in await image_events(api, namespace)] == \
            ["/images/create", "/images/delete", "/images/create"]


def tar_of(files: dict[str, bytes]) -> bytes:
    return files_tar(files)


@pytest.mark.runtime
async def test_a_round_tripped_image_runs(tmp_path: Path, ns_headers: dict[str, str], oci_layout: Path) -> None:
    """export -> delete -> import -> a container from it prints the file its second layer added."""
    from tests.runtime.conftest import delete_all_tasks, require_runtime
    from tests.runtime.tasks import gone

    require_runtime()
    require_registry_tools()
    settings = Settings(root=tmp_path / "root", state=tmp_path / "state",
                        listeners=(Listener.parse(f"unix://{tmp_path / 'state' / 'cargohold.sock'}"),))
    body = skopeo_archive(oci_layout, "two", "docker-archive", tmp_path / "two.tar", NAME)
    async with running_server(settings), uds_client(settings, timeout=60) as client:
        try:
            await imported(client, ns_headers, body)
            tar = await exported(client, ns_headers, NAME)
            assert (await client.delete(f"/images/{NAME}", headers=ns_headers)).status_code == 204
            await imported(client, ns_headers, tar)
            created = await client.post("/containers", headers=ns_headers, json={
                "id": "rt", "image": NAME, "process": {"args": ["cat", "/etc/hello"]}})
            assert created.status_code == 201, created.text
            assert (await client.post("/tasks", json={"container_id": "rt"}, headers=ns_headers)).status_code == 201
            assert (await client.post("/tasks/rt/start", headers=ns_headers)).status_code == 200
            exit_ = (await client.post("/tasks/rt/wait", headers=ns_headers)).json()
            logs = (await client.get("/tasks/rt/logs", headers=ns_headers)).text.splitlines()
            await gone(client, ns_headers, "rt")
            assert exit_["exit_status"] == 0
            assert [json.loads(line)["line"] for line in logs] == ["hello"]
        finally:
            await delete_all_tasks(client)
    assert leftovers(settings) == {}
