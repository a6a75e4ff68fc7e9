"""The distribution client against a real docker-registry (see conftest): resolve, fetch into the
content store, errors, basic auth, resume, concurrent fetches and push."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import logging
import re
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.content import ContentStore, digest_of
from app.errors import CargoholdError, ErrorKind
from app.images.descriptors import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
)
from app.images.references import parse_reference
from app.images.registry import Credentials, RegistryClient, Repository, make_ref_key
from tests.conftest import free_port
from tests.images.conftest import (
    PASSWORD,
    REPOSITORY,
    TOKEN_SERVICE,
    USERNAME,
    HttpServer,
    Registry,
    Reply,
    TokenRequest,
    TokenServer,
)

pytestmark = [pytest.mark.anyio, pytest.mark.registry]


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    async with RegistryClient(trust_env=False) as registry_client:
        yield registry_client


def repository(client: RegistryClient, registry: Registry, name: str, **kwargs: Any) -> Repository:
    return client.repository(parse_reference(f"{registry.host}/{name}"), plain_http=True, **kwargs)


async def pull(repo: Repository, store: ContentStore, desc: Descriptor | None = None) -> list[Descriptor]:
    """Fetch desc (default: the resolved target) and everything it reaches; return what was fetched."""
    desc = desc or await repo.resolve()
    fetched = [desc]
    document = json.loads(await repo.fetch_manifest(desc))
    await repo.fetch(desc, store)
    if desc.media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST):
        for child in document["manifests"]:
            fetched += await pull(repo, store, Descriptor.from_json(child))
        return fetched
    for blob in [document["config"], *document["layers"]]:
        blob_desc = Descriptor.from_json(blob)
        await repo.fetch(blob_desc, store)
        fetched.append(blob_desc)
    return fetched


async def assert_store_holds_exactly(store: ContentStore, descs: list[Descriptor]) -> None:
    """The store holds these blobs, each verified against its digest and size, and no ingest."""
    assert [info.digest for info in await store.walk()] == sorted({d.digest for d in descs})
    for desc in descs:
        data = store.blob_path(desc.digest).read_bytes()
        assert (digest_of(data), len(data)) == (desc.digest, desc.size)
    assert await store.ingests() == []


async def assert_empty(store: ContentStore) -> None:
    assert await store.walk() == [] and await store.ingests() == []


def layer_names(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as archive:
        return {member.name.removeprefix("./") for member in archive.getmembers()}


class TestPull:
    async def test_oci_image_resolves_and_every_blob_lands_verified(self, client: RegistryClient,
                                                                    registry: Registry, store: ContentStore) -> None:
        repo = repository(client, registry, f"{REPOSITORY}:latest")
        raw = registry.raw_manifest(f"{registry.host}/{REPOSITORY}:latest")
        desc = await repo.resolve()
        assert desc == Descriptor(OCI_MANIFEST, digest_of(raw), len(raw))
        assert await repo.fetch_manifest(desc) == raw
        manifest = json.loads(raw)
        assert manifest["config"]["mediaType"] == OCI_CONFIG
        assert [layer["mediaType"] for layer in manifest["layers"]] == [OCI_LAYER_GZIP]
        progress: dict[str, int] = {}
        fetched = [desc]
        for blob in [manifest["config"], *manifest["layers"]]:
            blob_desc = Descriptor.from_json(blob)
            await repo.fetch(blob_desc, store, on_progress=lambda d, n: progress.__setitem__(d.digest, n))
            fetched.append(blob_desc)
        await repo.fetch(desc, store)
        await assert_store_holds_exactly(store, fetched)
        assert progress == {d.digest: d.size for d in fetched[1:]}
        layer = await store.read(manifest["layers"][0]["digest"])
        assert {"bin/busybox", "bin/sh", "etc/passwd"} <= layer_names(layer)
        config = json.loads(await store.read(manifest["config"]["digest"]))
        assert config["config"]["Cmd"] == ["/bin/sh"]

    async def test_docker_schema2_image(self, client: RegistryClient, registry: Registry,
                                        store: ContentStore) -> None:
        repo = repository(client, registry, f"{REPOSITORY}:v2s2")
        desc = await repo.resolve()
        assert desc.media_type == DOCKER_MANIFEST
        fetched = await pull(repo, store, desc)
        manifest = json.loads(await store.read(desc.digest))
        assert manifest["config"]["mediaType"] == DOCKER_CONFIG
        assert {layer["mediaType"] for layer in manifest["layers"]} == {DOCKER_LAYER_GZIP}
        await assert_store_holds_exactly(store, fetched)

    async def test_multi_platform_index(self, client: RegistryClient, registry: Registry,
                                        store: ContentStore) -> None:
        repo = repository(client, registry, f"{REPOSITORY}:multi")
        desc = await repo.resolve()
        assert desc.media_type == OCI_INDEX
        index = json.loads(await repo.fetch_manifest(desc))
        platforms = [Descriptor.from_json(m).platform for m in index["manifests"]]
        assert platforms == [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
        fetched = await pull(repo, store, desc)
        await assert_store_holds_exactly(store, fetched)
        two = json.loads(await store.read(index["manifests"][1]["digest"]))
        assert len(two["layers"]) == 3
        whiteout = await store.read(two["layers"][2]["digest"])
        assert "etc/.wh.group" in layer_names(whiteout)

    async def test_docker_manifest_list(self, client: RegistryClient, registry: Registry,
                                        store: ContentStore) -> None:
        repo = repository(client, registry, f"{REPOSITORY}:list")
        desc = await repo.resolve()
        assert desc.media_type == DOCKER_MANIFEST_LIST
        fetched = await pull(repo, store, desc)
        assert [d.media_type for d in fetched[:2]] == [DOCKER_MANIFEST_LIST, DOCKER_MANIFEST]
        await assert_store_holds_exactly(store, fetched)

    async def test_resolve_by_digest_and_by_tag_with_digest(self, client: RegistryClient,
                                                            registry: Registry) -> None:
        raw = registry.raw_manifest(f"{registry.host}/{REPOSITORY}:two")
        expected = Descriptor(OCI_MANIFEST, digest_of(raw), len(raw))
        for name in (f"{REPOSITORY}@{expected.digest}", f"{REPOSITORY}:latest@{expected.digest}"):
            assert await repository(client, registry, name).resolve() == expected

    async def test_blob_already_in_the_store_is_not_downloaded_again(self, client: RegistryClient,
                                                                     registry: Registry,
                                                                     store: ContentStore) -> None:
        repo = repository(client, registry, f"{REPOSITORY}:latest")
        manifest = json.loads(await repo.fetch_manifest(await repo.resolve()))
        layer = Descriptor.from_json(manifest["layers"][0])
        await repo.fetch(layer, store)
        before = registry.blob_gets(layer.digest)
        await repo.fetch(layer, store)
        assert registry.blob_gets(layer.digest) == before


class TestConcurrency:
    async def test_two_pulls_of_one_blob_download_it_once(self, client: RegistryClient, registry: Registry,
                                                          store: ContentStore) -> None:
        first = repository(client, registry, f"{REPOSITORY}:latest")
        second = repository(client, registry, f"{REPOSITORY}:two")
        manifest = json.loads(await first.fetch_manifest(await first.resolve()))
        layer = Descriptor.from_json(manifest["layers"][0])
        before = registry.blob_gets(layer.digest)
        await asyncio.gather(first.fetch(layer, store), second.fetch(layer, store))
        assert registry.blob_gets(layer.digest) == before + 1
        await assert_store_holds_exactly(store, [layer])

    async def test_a_cut_transfer_is_resumed_with_a_range_request(self, client: RegistryClient,
                                                                  registry: Registry,
                                                                  store: ContentStore) -> None:
        repo = repository(client, registry, f"{REPOSITORY}:latest")
        manifest = json.loads(await repo.fetch_manifest(await repo.resolve()))
        layer = Descriptor.from_json(manifest["layers"][0])
        whole = registry.blob_data(layer.digest).read_bytes()
        half = len(whole) // 2
        async with store.writer(make_ref_key(layer), total=layer.size, expected=layer.digest) as writer:
            await writer.write(whole[:half])  # as if the registry had stopped here
        assert [s.offset for s in await store.ingests()] == [half]
        await repo.fetch(layer, store)
        await assert_store_holds_exactly(store, [layer])
        # The access log shows the resumed GET answered 206 with the second half only.
        pattern = rf'"GET /v2/{REPOSITORY}/blobs/{layer.digest} HTTP/1.1" 206 {len(whole) - half} '
        assert re.search(pattern, registry.log), registry.log[-2000:]


class TestErrors:
    @pytest.mark.parametrize("name", [f"{REPOSITORY}:nope", "library/nothing:latest",
                                      f"{REPOSITORY}@sha256:{'0' * 64}"])
    async def test_missing_tag_repository_or_digest_is_not_found(self, client: RegistryClient,
                                                                 registry: Registry, name: str) -> None:
        with pytest.raises(CargoholdError) as caught:
            await repository(client, registry, name).resolve()
        assert caught.value.kind is ErrorKind.NOT_FOUND
        assert f'image "{registry.host}/{name}" not found in registry {registry.host}' in caught.value.detail

    async def test_missing_blob_is_not_found_and_leaves_nothing(self, client: RegistryClient, registry: Registry,
                                                                store: ContentStore) -> None:
        missing = Descriptor(OCI_LAYER_GZIP, "sha256:" + "1" * 64, 10)
        with pytest.raises(CargoholdError) as caught:
            await repository(client, registry, REPOSITORY).fetch(missing, store)
        assert caught.value.kind is ErrorKind.NOT_FOUND
        assert f"blob {missing.digest} of {registry.host}/{REPOSITORY} not found" in caught.value.detail
        await assert_empty(store)

    @pytest.mark.parametrize("delta", [-1, +1])
    async def test_wrong_size_is_invalid_and_leaves_nothing(self, client: RegistryClient, registry: Registry,
                                                            store: ContentStore, delta: int) -> None:
        repo = repository(client, registry, f"{REPOSITORY}:latest")
        manifest = json.loads(await repo.fetch_manifest(await repo.resolve()))
        real = Descriptor.from_json(manifest["layers"][0])
        wrong = Descriptor(real.media_type, real.digest, real.size + delta)
        with pytest.raises(CargoholdError) as caught:
            await repo.fetch(wrong, store)
        assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
        assert real.digest in caught.value.detail and str(real.size + delta) in caught.value.detail
        await assert_empty(store)

    async def test_registry_sending_other_bytes_is_a_digest_mismatch(self, client: RegistryClient,
                                                                     registry: Registry,
                                                                     store: ContentStore) -> None:
        data = b"a blob of this test only\n" * 100
        digest = registry.put_blob("corrupt/blob", data)
        registry.blob_data(digest).write_bytes(data.upper())  # same size, other bytes
        with pytest.raises(CargoholdError) as caught:
            await repository(client, registry, "corrupt/blob").fetch(Descriptor(OCI_LAYER_GZIP, digest, len(data)),
                                                                     store)
        assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
        assert f"blob {digest} of {registry.host}/corrupt/blob from registry" in caught.value.detail
        assert f"content has digest {digest_of(data.upper())}, expected {digest}" in caught.value.detail
        await assert_empty(store)

    async def test_manifest_with_other_bytes_is_a_digest_mismatch(self, client: RegistryClient,
                                                                  registry: Registry,
                                                                  store: ContentStore) -> None:
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                            "annotations": {"test": "manifest-mismatch"}}).encode()
        digest = registry.put_manifest("corrupt/manifest", "v1", OCI_INDEX, index)
        registry.blob_data(digest).write_bytes(index.replace(b"mismatch", b"MISMATCH"))
        repo = repository(client, registry, "corrupt/manifest:v1")
        desc = await repo.resolve()  # HEAD: the registry's word, from its links
        assert desc == Descriptor(OCI_INDEX, digest, len(index))
        with pytest.raises(CargoholdError) as caught:
            await repo.fetch(desc, store)
        assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
        assert f"expected {digest}" in caught.value.detail
        await assert_empty(store)

    async def test_manifest_over_the_limit_is_too_large(self, registry: Registry, store: ContentStore) -> None:
        async with RegistryClient(trust_env=False, max_manifest_bytes=100) as small:
            repo = repository(small, registry, f"{REPOSITORY}:latest")
            desc = await repo.resolve()
            assert desc.size > 100
            with pytest.raises(CargoholdError) as caught:
                await repo.fetch(desc, store)
            assert caught.value.kind is ErrorKind.TOO_LARGE
            # A descriptor that understates the size: the GET is cut off at the limit.
            with pytest.raises(CargoholdError) as caught:
                await repo.fetch_manifest(Descriptor(desc.media_type, desc.digest, 50))
            assert caught.value.kind is ErrorKind.TOO_LARGE
            assert "larger than 100 bytes" in caught.value.detail
        await assert_empty(store)

    async def test_foreign_layer_is_refused(self, client: RegistryClient, registry: Registry,
                                            store: ContentStore) -> None:
        foreign = Descriptor(DOCKER_FOREIGN_LAYER, "sha256:" + "2" * 64, 10)
        with pytest.raises(CargoholdError) as caught:
            await repository(client, registry, REPOSITORY).fetch(foreign, store)
        assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
        assert "foreign layer" in caught.value.detail
        await assert_empty(store)

    async def test_registry_down_is_unavailable(self, client: RegistryClient, store: ContentStore) -> None:
        host = f"127.0.0.1:{free_port()}"
        with pytest.raises(CargoholdError) as caught:
            await client.repository(parse_reference(f"{host}/a/b:c"), plain_http=True).resolve()
        assert caught.value.kind is ErrorKind.UNAVAILABLE
        assert f"registry {host} is unavailable" in caught.value.detail

    async def test_tls_to_a_plain_http_registry_is_unavailable_with_a_hint(self, client: RegistryClient,
                                                                         registry: Registry) -> None:
        with pytest.raises(CargoholdError) as caught:
            await client.repository(parse_reference(f"{registry.host}/{REPOSITORY}")).resolve()
        assert caught.value.kind is ErrorKind.UNAVAILABLE
        assert "plain_http" in caught.value.detail

    async def test_insecure_registries_use_plain_http(self, registry: Registry) -> None:
        async with RegistryClient(trust_env=False, insecure_registries=[registry.host]) as insecure:
            desc = await insecure.repository(parse_reference(f"{registry.host}/{REPOSITORY}")).resolve()
        assert desc.media_type == OCI_MANIFEST


class TestBasicAuth:
    async def test_anonymous_is_unauthenticated(self, client: RegistryClient, auth_registry: Registry) -> None:
        with pytest.raises(CargoholdError) as caught:
            await repository(client, auth_registry, f"{REPOSITORY}:latest").resolve()
        assert caught.value.kind is ErrorKind.UNAUTHENTICATED
        assert f"registry {auth_registry.host} needs credentials" in caught.value.detail

    async def test_wrong_password_is_unauthenticated_and_never_shown(self, client: RegistryClient,
                                                                    auth_registry: Registry,
                                                                    store: ContentStore,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        wrong = Credentials(USERNAME, "hunter2-wrong")
        with pytest.raises(CargoholdError) as caught:
            await repository(client, auth_registry, f"{REPOSITORY}:latest", credentials=wrong).resolve()
        assert caught.value.kind is ErrorKind.UNAUTHENTICATED
        assert "refused the credentials" in caught.value.detail
        for text in (caught.value.detail, repr(caught.value), repr(wrong), caplog.text):
            assert "hunter2" not in text
        await assert_empty(store)

    async def test_right_password_pulls(self, client: RegistryClient, auth_registry: Registry,
                                        store: ContentStore, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        repo = repository(client, auth_registry, f"{REPOSITORY}:latest", credentials=Credentials(USERNAME, PASSWORD))
        fetched = await pull(repo, store)
        await assert_store_holds_exactly(store, fetched)
        assert PASSWORD not in caplog.text


class TestPush:
    async def test_push_then_push_again_uploads_nothing_then_mount(self, client: RegistryClient,
                                                                   registry: Registry,
                                                                   store: ContentStore) -> None:
        source = repository(client, registry, f"{REPOSITORY}:two")
        target = await source.resolve()
        fetched = await pull(source, store, target)
        blobs = fetched[1:]
        data = await store.read(target.digest)

        pushed = repository(client, registry, "pushed/busybox:copy", push=True)
        assert [await pushed.push_blob(b, store) for b in blobs] == ["uploaded"] * len(blobs)
        await pushed.push_manifest(target, data)
        assert registry.raw_manifest(f"{registry.host}/pushed/busybox:copy") == data

        again = repository(client, registry, "pushed/busybox:copy", push=True)
        assert [await again.push_blob(b, store) for b in blobs] == ["exists"] * len(blobs)

        mounted = repository(client, registry, "mounted/busybox:m", push=True)
        assert [await mounted.push_blob(b, store, mount_from="pushed/busybox") for b in blobs] == (
            ["mounted"] * len(blobs))
        await mounted.push_manifest(target, data)
        # What we pushed reads back whole through a fresh pull.
        other = ContentStore(store.root.parent / "other")
        refetched = await pull(repository(client, registry, "mounted/busybox:m"), other)
        await assert_store_holds_exactly(other, refetched)

    async def test_push_with_basic_auth(self, client: RegistryClient, auth_registry: Registry, registry: Registry,
                                        store: ContentStore) -> None:
        source = repository(client, registry, f"{REPOSITORY}:latest")
        target = await source.resolve()
        fetched = await pull(source, store, target)
        anonymous = repository(client, auth_registry, "pushed/anon:v1", push=True)
        with pytest.raises(CargoholdError) as caught:
            await anonymous.push_blob(fetched[1], store)
        assert caught.value.kind is ErrorKind.UNAUTHENTICATED
        pushed = repository(client, auth_registry, "pushed/busybox:v1", push=True,
                            credentials=Credentials(USERNAME, PASSWORD))
        for blob in fetched[1:]:
            assert await pushed.push_blob(blob, store) == "uploaded"
        await pushed.push_manifest(target, await store.read(target.digest))
        assert auth_registry.raw_manifest(f"{auth_registry.host}/pushed/busybox:v1") == await store.read(
            target.digest)

    async def test_manifest_that_does_not_match_its_descriptor_is_not_sent(self, client: RegistryClient,
                                                                           registry: Registry) -> None:
        data = b'{"schemaVersion": 2}'
        wrong = Descriptor(OCI_MANIFEST, "sha256:" + hashlib.sha256(b"other").hexdigest(), len(data))
        with pytest.raises(CargoholdError) as caught:
            await repository(client, registry, "pushed/wrong:v1", push=True).push_manifest(wrong, data)
        assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
        with pytest.raises(CargoholdError) as caught:
            await repository(client, registry, "pushed/wrong:v1").resolve()
        assert caught.value.kind is ErrorKind.NOT_FOUND


class TestTLS:
    async def test_verified_against_the_ca_dir(self, tls_registry: Registry, store: ContentStore) -> None:
        assert tls_registry.pki is not None
        async with RegistryClient(trust_env=False, ca_dir=tls_registry.pki.ca_dir) as verified:
            repo = verified.repository(parse_reference(f"{tls_registry.host}/{REPOSITORY}:latest"),
                                       credentials=Credentials(USERNAME, PASSWORD))
            fetched = await pull(repo, store)
        await assert_store_holds_exactly(store, fetched)

    async def test_unknown_ca_is_unavailable_and_says_why(self, client: RegistryClient, tls_registry: Registry,
                                                          store: ContentStore) -> None:
        repo = client.repository(parse_reference(f"{tls_registry.host}/{REPOSITORY}:latest"),
                                 credentials=Credentials(USERNAME, PASSWORD))
        with pytest.raises(CargoholdError) as caught:
            await repo.resolve()
        assert caught.value.kind is ErrorKind.UNAVAILABLE
        assert "TLS certificate is not trusted" in caught.value.detail
        await assert_empty(store)

    async def test_wrong_password_over_tls(self, tls_registry: Registry) -> None:
        assert tls_registry.pki is not None
        async with RegistryClient(trust_env=False, ca_dir=tls_registry.pki.ca_dir) as verified:
            repo = verified.repository(parse_reference(f"{tls_registry.host}/{REPOSITORY}:latest"),
                                       credentials=Credentials(USERNAME, "nope-nope"))
            with pytest.raises(CargoholdError) as caught:
                await repo.resolve()
        assert caught.value.kind is ErrorKind.UNAUTHENTICATED
        assert "nope-nope" not in caught.value.detail


class TestTokenAuth:
    async def test_anonymous_pull_of_a_public_repository(self, client: RegistryClient, token_registry: Registry,
                                                         token_server: TokenServer, store: ContentStore) -> None:
        before = len(token_server.requests)
        fetched = await pull(repository(client, token_registry, "public/busybox:latest"), store)
        await assert_store_holds_exactly(store, fetched)
        # One challenge answered; the token is then reused for every blob of the pull.
        [asked] = token_server.requests[before:]
        assert asked == TokenRequest(None, TOKEN_SERVICE, ["repository:public/busybox:pull"])

    async def test_anonymous_pull_of_a_private_repository_is_unauthenticated(
            self, client: RegistryClient, token_registry: Registry, store: ContentStore) -> None:
        with pytest.raises(CargoholdError) as caught:
            await repository(client, token_registry, f"{REPOSITORY}:latest").resolve()
        assert caught.value.kind is ErrorKind.UNAUTHENTICATED
        assert f'image "{token_registry.host}/{REPOSITORY}:latest"' in caught.value.detail
        await assert_empty(store)

    async def test_pull_with_credentials(self, client: RegistryClient, token_registry: Registry,
                                         token_server: TokenServer, store: ContentStore,
                                         caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        before = len(token_server.requests)
        repo = repository(client, token_registry, f"{REPOSITORY}:latest",
                          credentials=Credentials(USERNAME, PASSWORD))
        fetched = await pull(repo, store)
        await assert_store_holds_exactly(store, fetched)
        assert [r.user for r in token_server.requests[before:]] == [USERNAME]
        assert PASSWORD not in caplog.text

    async def test_wrong_password_is_refused_by_the_token_service(self, client: RegistryClient,
                                                                  token_registry: Registry,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        repo = repository(client, token_registry, f"{REPOSITORY}:latest",
                          credentials=Credentials(USERNAME, "hunter2-wrong"))
        with pytest.raises(CargoholdError) as caught:
            await repo.resolve()
        assert caught.value.kind is ErrorKind.UNAUTHENTICATED
        assert "token service" in caught.value.detail and "refused the credentials" in caught.value.detail
        assert "hunter2" not in caught.value.detail and "hunter2" not in caplog.text

    async def test_push_and_cross_repository_mount_ask_for_the_scopes_they_need(
            self, client: RegistryClient, token_registry: Registry, token_server: TokenServer,
            store: ContentStore) -> None:
        credentials = Credentials(USERNAME, PASSWORD)
        source = repository(client, token_registry, f"{REPOSITORY}:latest", credentials=credentials)
        target = await source.resolve()
        blobs = (await pull(source, store, target))[1:]
        first = repository(client, token_registry, "pushed/token:v1", push=True, credentials=credentials)
        assert {await first.push_blob(b, store) for b in blobs} == {"uploaded"}
        await first.push_manifest(target, await store.read(target.digest))
        before = len(token_server.requests)
        mounted = repository(client, token_registry, "mounted/token:v1", push=True, credentials=credentials)
        assert [await mounted.push_blob(b, store, mount_from="pushed/token") for b in blobs] == (
            ["mounted"] * len(blobs))
        asked = {scope for request in token_server.requests[before:] for scope in request.scopes}
        assert {"repository:mounted/token:pull,push", "repository:pushed/token:pull"} <= asked


class TestRedirectsAndCuts:
    async def test_blob_redirect_to_another_host_carries_no_authorization(
            self, client: RegistryClient, registry: Registry, store: ContentStore) -> None:
        repo = repository(client, registry, f"{REPOSITORY}:latest")
        layer = Descriptor.from_json(json.loads(await repo.fetch_manifest(await repo.resolve()))["layers"][0])
        data = registry.blob_data(layer.digest).read_bytes()
        with HttpServer(lambda seen: Reply(200, {"Content-Type": "application/octet-stream"}, data)) as storage, \
                HttpServer(lambda seen: Reply(307, {"Location": f"{storage.url}/bucket/{layer.digest}"})) as front:
            fronted = client.repository(parse_reference(f"{front.host}/{REPOSITORY}"), plain_http=True,
                                        credentials=Credentials(token="the-bearer-token"))
            await fronted.fetch(layer, store)
        assert front.seen[0].headers.get("authorization") == "Bearer the-bearer-token"
        assert [s.path for s in storage.seen] == [f"/bucket/{layer.digest}"]
        assert "authorization" not in storage.seen[0].headers
        await assert_store_holds_exactly(store, [layer])

    async def test_registry_stopping_mid_blob_is_unavailable_then_the_next_fetch_resumes(
            self, client: RegistryClient, registry: Registry, store: ContentStore) -> None:
        repo = repository(client, registry, f"{REPOSITORY}:latest")
        layer = Descriptor.from_json(json.loads(await repo.fetch_manifest(await repo.resolve()))["layers"][0])
        data = registry.blob_data(layer.digest).read_bytes()
        cut = len(data) // 3
        with HttpServer(lambda seen: Reply(200, {}, data, cut_after=cut)) as dying:
            flaky = client.repository(parse_reference(f"{dying.host}/{REPOSITORY}"), plain_http=True)
            with pytest.raises(CargoholdError) as caught:
                await flaky.fetch(layer, store)
        assert caught.value.kind is ErrorKind.UNAVAILABLE
        assert f"stopped sending blob {layer.digest}" in caught.value.detail
        assert f"after {cut} of {layer.size} bytes" in caught.value.detail
        assert await store.walk() == []  # no partial blob
        assert [(s.ref, s.offset) for s in await store.ingests()] == [(make_ref_key(layer), cut)]
        await repo.fetch(layer, store)
        await assert_store_holds_exactly(store, [layer])


async def test_a_manifest_over_4_mib_is_too_large_and_never_read_whole(client: RegistryClient,
                                                                      store: ContentStore) -> None:
    """distribution 2.8 itself refuses to store such a manifest, so a fake registry serves one."""
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                        "annotations": {"filler": "x" * (4 * 1024 * 1024)}}).encode()
    # No Docker-Content-Digest on HEAD: resolve must GET, and stops at the Content-Length.
    with HttpServer(lambda seen: Reply(200, {"Content-Type": OCI_INDEX}, index)) as fake:
        repo = client.repository(parse_reference(f"{fake.host}/large/index:v1"), plain_http=True)
        with pytest.raises(CargoholdError) as caught:
            await repo.resolve()
        assert caught.value.kind is ErrorKind.TOO_LARGE
        assert "larger than 4194304 bytes" in caught.value.detail
        assert [s.method for s in fake.seen] == ["HEAD", "GET"]
        desc = Descriptor(OCI_INDEX, digest_of(index), len(index))
        with pytest.raises(CargoholdError) as caught:
            await repo.fetch(desc, store)
        assert caught.value.kind is ErrorKind.TOO_LARGE
        assert f"is {len(index)} bytes; manifests are limited to 4194304" in caught.value.detail
        assert len(fake.seen) == 2  # refused from the descriptor: no request at all
    await assert_empty(store)


async def test_an_unknown_manifest_media_type_is_refused_clearly(client: RegistryClient) -> None:
    schema1 = b'{"schemaVersion": 1, "name": "a/b", "tag": "v1", "fsLayers": []}'
    media_type = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    with HttpServer(lambda seen: Reply(200, {"Content-Type": media_type}, schema1)) as fake:
        with pytest.raises(CargoholdError) as caught:
            await client.repository(parse_reference(f"{fake.host}/a/b:v1"), plain_http=True).resolve()
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert f"has media type {media_type}, which Cargohold does not support" in caught.value.detail
