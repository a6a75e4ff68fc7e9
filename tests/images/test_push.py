"""Push through the API to real docker-registries (see conftest): every blob uploaded once, a
second push uploading none, cross-repository mounts, an index pushed whole or as the platform
pulled, and the failures (unknown image, bad reference, wrong password, registry down), which
change nothing in the daemon."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.images.descriptors import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from tests.conftest import free_port
from tests.images.conftest import PASSWORD, REPOSITORY, USERNAME, Registry, running_registry

pytestmark = [pytest.mark.anyio, pytest.mark.registry]

Json = dict[str, Any]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, oci_layout: Path) -> Iterator[Registry]:
    """An empty plain-HTTP registry to push to: another host than the one pulled from, so no mount."""
    with running_registry(tmp_path_factory.mktemp("push-target")) as started:
        yield started


async def pulled(api: httpx.AsyncClient, headers: dict[str, str], reference: str, **extra: Any) -> Json:
    response = await api.post("/images/pull", json={"reference": reference, "plain_http": True, "unpack": False,
                                                     **extra}, headers=headers)
    assert response.status_code == 201, response.text
    image: Json = response.json()
    return image


async def push(api: httpx.AsyncClient, headers: dict[str, str], name: str, reference: str,
               **extra: Any) -> httpx.Response:
    return await api.post(f"/images/{name}/push", json={"reference": reference, "plain_http": True, **extra},
                          headers=headers)


async def pushed(api: httpx.AsyncClient, headers: dict[str, str], name: str, reference: str, **extra: Any) -> Json:
    response = await push(api, headers, name, reference, **extra)
    assert response.status_code == 200, response.text
    result: Json = response.json()
    return result


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def blobs_of(registry: Registry, reference: str) -> list[str]:
    """Config and layer digests of a manifest, read with skopeo."""
    manifest = json.loads(registry.raw_manifest(reference))
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


async def daemon_state(api: httpx.AsyncClient, headers: dict[str, str]) -> tuple[Any, list[Any]]:
    """The images of the namespace and every stored event: a failed push changes neither."""
    images = await api.get("/images", headers=headers)
    events = await api.get("/events/history", params={"limit": 1000})
    assert events.status_code == 200, events.text
    return images.json(), events.json()["events"]


class TestPush:
    async def test_every_blob_uploads_then_a_second_push_uploads_none(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, target: Registry,
            namespace: str) -> None:
        source = f"{registry.host}/{REPOSITORY}:two"
        image = await pulled(api, headers, source)
        manifest = registry.raw_manifest(source)
        blobs = blobs_of(registry, source)
        assert len(blobs) == 4  # config + three layers
        repository = f"pushed-{namespace}/busybox"
        result = await pushed(api, headers, image["name"], f"{target.host}/{repository}:v1")
        assert result["reference"] == f"{target.host}/{repository}:v1"
        assert result["digest"] == image["target"]["digest"] == sha256(manifest)
        assert result["media_type"] == OCI_MANIFEST and result["size"] == len(manifest)
        assert sorted(result["pushed"]) == sorted(blobs)
        assert result["mounted"] == [] and result["existing"] == []
        # What the registry holds is what was pulled, byte for byte (read with skopeo and from its disk).
        assert target.raw_manifest(f"{target.host}/{repository}:v1") == manifest
        for digest in blobs:
            assert target.blob_data(digest).read_bytes() == registry.blob_data(digest).read_bytes()
        assert target.upload_requests(repository, "PUT") == 4
        # Pulled back by digest, it is the same image.
        back = await pulled(api, {"Cargohold-Namespace": f"{namespace}-back"},
                            f"{target.host}/{repository}@{result['digest']}")
        assert back["target"] == image["target"] and back["config_digest"] == image["config_digest"]

        # The second push asks (HEAD) and sends no blob; the tag moves to the same manifest.
        posts = target.upload_requests(repository)
        again = await pushed(api, headers, image["name"], f"{target.host}/{repository}:v2")
        assert again["pushed"] == [] and again["mounted"] == []
        assert sorted(again["existing"]) == sorted(blobs)
        assert target.upload_requests(repository) == posts
        assert target.upload_requests(repository, "PUT") == 4
        assert target.raw_manifest(f"{target.host}/{repository}:v2") == manifest

    async def test_within_the_registry_blobs_are_mounted_from_the_pulled_repository(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, namespace: str) -> None:
        source = f"{registry.host}/{REPOSITORY}:latest"
        image = await pulled(api, headers, source)
        repository = f"mounted-{namespace}/busybox"
        result = await pushed(api, headers, image["name"], f"{registry.host}/{repository}:m")
        blobs = blobs_of(registry, source)
        assert sorted(result["mounted"]) == sorted(blobs)
        assert result["pushed"] == [] and result["existing"] == []
        assert registry.mounts(repository) == len(blobs)
        assert registry.upload_requests(repository, "PUT") == 0  # no byte sent
        assert registry.raw_manifest(f"{registry.host}/{repository}:m") == registry.raw_manifest(source)

    async def test_an_index_pulled_for_one_platform_pushes_that_platform_alone(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, target: Registry,
            namespace: str) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:multi", platform="linux/arm64")
        assert image["target"]["media_type"] == OCI_INDEX
        repository = f"one-{namespace}/busybox"
        result = await pushed(api, headers, image["name"], f"{target.host}/{repository}:arm")
        two = registry.raw_manifest(f"{registry.host}/{REPOSITORY}:two")
        assert result["digest"] == sha256(two) and result["media_type"] == OCI_MANIFEST
        assert target.raw_manifest(f"{target.host}/{repository}:arm") == two

    async def test_an_index_whose_platforms_are_all_in_the_store_is_pushed_whole(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, target: Registry,
            namespace: str) -> None:
        source = f"{registry.host}/{REPOSITORY}:multi"
        await pulled(api, headers, source, platform="linux/arm64")
        image = await pulled(api, headers, source, platform="linux/amd64")
        repository = f"whole-{namespace}/busybox"
        result = await pushed(api, headers, image["name"], f"{target.host}/{repository}:all")
        index = registry.raw_manifest(source)
        assert result["digest"] == sha256(index) == image["target"]["digest"]
        assert result["media_type"] == OCI_INDEX
        assert target.raw_manifest(f"{target.host}/{repository}:all") == index
        # Both platforms' blobs went, shared ones once; each child is there by digest.
        both = set(blobs_of(registry, f"{registry.host}/{REPOSITORY}:latest")) | set(
            blobs_of(registry, f"{registry.host}/{REPOSITORY}:two"))
        assert sorted(result["pushed"]) == sorted(both)
        for child in json.loads(index)["manifests"]:
            assert target.raw_manifest(f"{target.host}/{repository}@{child['digest']}")
        arm = await pulled(api, {"Cargohold-Namespace": f"{namespace}-arm"}, f"{target.host}/{repository}:all",
                           platform="linux/arm64")
        assert arm["platforms"] == ["linux/amd64", "linux/arm64"]

    async def test_a_docker_manifest_list_pulled_whole_is_pushed_whole(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, target: Registry,
            namespace: str) -> None:
        source = f"{registry.host}/{REPOSITORY}:list"  # one platform: the pull stores all it names
        image = await pulled(api, headers, source)
        repository = f"list-{namespace}/busybox"
        result = await pushed(api, headers, image["name"], f"{target.host}/{repository}:v1")
        listed = registry.raw_manifest(source)
        assert result["digest"] == sha256(listed) and result["media_type"] == DOCKER_MANIFEST_LIST
        assert target.raw_manifest(f"{target.host}/{repository}:v1") == listed
        child = json.loads(listed)["manifests"][0]
        assert child["mediaType"] == DOCKER_MANIFEST
        assert sorted(result["pushed"]) == sorted(blobs_of(registry, f"{registry.host}/{REPOSITORY}:v2s2"))

    async def test_by_digest(self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry,
                             target: Registry, namespace: str) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        digest = image["target"]["digest"]
        repository = f"digest-{namespace}/busybox"
        result = await pushed(api, headers, image["name"], f"{target.host}/{repository}@{digest}")
        assert result["digest"] == digest
        assert target.raw_manifest(f"{target.host}/{repository}@{digest}") == registry.raw_manifest(
            f"{registry.host}/{REPOSITORY}:latest")

    async def test_short_names_are_normalized(self, api: httpx.AsyncClient, headers: dict[str, str],
                                              registry: Registry, target: Registry, namespace: str) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        # No tag in the reference: latest, as docker push.
        result = await pushed(api, headers, image["name"], f"{target.host}/short-{namespace}/busybox")
        assert result["reference"] == f"{target.host}/short-{namespace}/busybox:latest"
        assert target.raw_manifest(f"{target.host}/short-{namespace}/busybox:latest")


class TestPushRefused:
    async def test_unknown_image_is_404_and_sends_nothing(self, api: httpx.AsyncClient, headers: dict[str, str],
                                                          registry: Registry, target: Registry,
                                                          namespace: str) -> None:
        await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")  # the namespace exists
        before = await daemon_state(api, headers)
        response = await push(api, headers, "nothing/here:v1", f"{target.host}/absent-{namespace}/x:v1")
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert 'image "docker.io/nothing/here:v1" not found' in response.json()["detail"]
        assert await daemon_state(api, headers) == before
        assert f"absent-{namespace}" not in target.log

    @pytest.mark.parametrize("reference", [
        pytest.param("Upper/Case:v1", id="uppercase"),
        pytest.param("host:5000/a/b:bad tag", id="whitespace"),
        pytest.param("host:5000/a/b@sha256:short", id="bad-digest"),
        pytest.param("", id="empty"),
    ])
    async def test_bad_reference_is_400(self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry,
                                        reference: str) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        before = await daemon_state(api, headers)
        response = await push(api, headers, image["name"], reference)
        assert response.status_code == 400, response.text
        assert response.json()["detail"].startswith("reference")
        assert await daemon_state(api, headers) == before

    async def test_a_digest_that_is_not_the_image_is_400_and_sends_nothing(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, target: Registry,
            namespace: str) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        other = "sha256:" + "0" * 64
        response = await push(api, headers, image["name"], f"{target.host}/wrong-{namespace}/b@{other}")
        assert response.status_code == 400, response.text
        assert f"pushes as {image['target']['digest']}, not {other}" in response.json()["detail"]
        assert f"wrong-{namespace}" not in target.log

    async def test_unknown_fields_are_422(self, api: httpx.AsyncClient, headers: dict[str, str]) -> None:
        response = await api.post("/images/busybox/push", json={"reference": "a/b", "force": True}, headers=headers)
        assert response.status_code == 422, response.text
        assert "force" in response.json()["detail"]

    async def test_wrong_password_is_401_and_anonymous_too(
            self, api: httpx.AsyncClient, headers: dict[str, str], registry: Registry, auth_registry: Registry,
            namespace: str) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        before = await daemon_state(api, headers)
        repository = f"{auth_registry.host}/denied-{namespace}/busybox:v1"
        for credentials in ({"username": USERNAME, "password": "wrong"}, None):
            response = await push(api, headers, image["name"], repository, credentials=credentials)
            assert response.status_code == 401, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert f"registry {auth_registry.host}" in response.json()["detail"]
        assert await daemon_state(api, headers) == before
        with pytest.raises(RuntimeError, match="manifest unknown"):
            auth_registry.raw_manifest(repository)
        # The right password pushes.
        result = await pushed(api, headers, image["name"], repository,
                              credentials={"username": USERNAME, "password": PASSWORD})
        assert auth_registry.raw_manifest(repository) == registry.raw_manifest(f"{registry.host}/{REPOSITORY}:latest")
        assert sorted(result["pushed"]) == sorted(blobs_of(registry, f"{registry.host}/{REPOSITORY}:latest"))

    async def test_registry_down_is_503(self, api: httpx.AsyncClient, headers: dict[str, str],
                                        registry: Registry) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        before = await daemon_state(api, headers)
        down = f"127.0.0.1:{free_port()}"
        response = await push(api, headers, image["name"], f"{down}/nobody/busybox:v1")
        assert response.status_code == 503, response.text
        assert f"registry {down} is unavailable" in response.json()["detail"]
        assert await daemon_state(api, headers) == before

    async def test_tls_to_a_plain_http_registry_is_503_with_a_hint(self, api: httpx.AsyncClient,
                                                                   headers: dict[str, str],
                                                                   registry: Registry, target: Registry) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        response = await api.post(f"/images/{image['name']}/push", headers=headers,
                                  json={"reference": f"{target.host}/tls/busybox:v1"})
        assert response.status_code == 503, response.text
        assert "plain_http" in response.json()["detail"]

    async def test_an_image_whose_content_is_gone_is_409(self, api: httpx.AsyncClient, headers: dict[str, str],
                                                         registry: Registry, target: Registry, settings: Settings,
                                                         namespace: str) -> None:
        image = await pulled(api, headers, f"{registry.host}/{REPOSITORY}:latest")
        layer = blobs_of(registry, f"{registry.host}/{REPOSITORY}:latest")[1]
        (settings.root / "content" / "blobs" / "sha256" / layer.split(":")[1]).unlink()  # as a disk mishap would
        response = await push(api, headers, image["name"], f"{target.host}/gone-{namespace}/busybox:v1")
        assert response.status_code == 409, response.text
        assert "pull it again" in response.json()["detail"]
        assert f"gone-{namespace}" not in target.log
