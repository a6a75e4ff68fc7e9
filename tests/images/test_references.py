"""Reference parsing and normalization, against the cases of distribution's normalize_test.go."""

from __future__ import annotations

import pytest

from app.errors import CargoholdError, ErrorKind
from app.images.references import parse_reference
from app.images.registry import parse_challenge

D64 = "sha256:" + "a" * 64


@pytest.mark.parametrize(("text", "normalized", "api_host"), [
    pytest.param("busybox", "docker.io/library/busybox:latest", "registry-1.docker.io", id="official"),
    pytest.param("busybox:1.36", "docker.io/library/busybox:1.36", "registry-1.docker.io", id="tag"),
    pytest.param("user/repo", "docker.io/user/repo:latest", "registry-1.docker.io", id="user"),
    pytest.param("docker.io/busybox", "docker.io/library/busybox:latest", "registry-1.docker.io", id="docker.io"),
    pytest.param("index.docker.io/busybox", "docker.io/library/busybox:latest", "registry-1.docker.io",
                 id="legacy-index"),
    pytest.param("host:5000/a/b:tag", "host:5000/a/b:tag", "host:5000", id="port"),
    pytest.param("127.0.0.1:5000/library/busybox", "127.0.0.1:5000/library/busybox:latest", "127.0.0.1:5000",
                 id="ip"),
    pytest.param("localhost/a", "localhost/a:latest", "localhost", id="localhost"),
    pytest.param("localhost:5000/a_b/c.d/e-f__g", "localhost:5000/a_b/c.d/e-f__g:latest", "localhost:5000",
                 id="separators"),
    pytest.param(f"host.example/a@{D64}", f"host.example/a@{D64}", "host.example", id="digest-only"),
    pytest.param(f"host/a@{D64}", f"docker.io/host/a@{D64}", "registry-1.docker.io", id="dotless-is-a-path"),
    pytest.param(f"busybox:1.36@{D64}", f"docker.io/library/busybox:1.36@{D64}", "registry-1.docker.io",
                 id="tag-and-digest"),
    pytest.param("Registry.Example.com/a", "Registry.Example.com/a:latest", "Registry.Example.com",
                 id="uppercase-domain"),
    pytest.param("[::1]:5000/a:b", "[::1]:5000/a:b", "[::1]:5000", id="ipv6"),
    pytest.param("host:5000", "docker.io/library/host:5000", "registry-1.docker.io", id="name-colon-tag"),
    pytest.param("a:" + "t" * 128, "docker.io/library/a:" + "t" * 128, "registry-1.docker.io", id="longest-tag"),
    pytest.param("a:_x.Y-1", "docker.io/library/a:_x.Y-1", "registry-1.docker.io", id="tag-charset"),
])
def test_parse_and_normalize(text: str, normalized: str, api_host: str) -> None:
    reference = parse_reference(text)
    assert str(reference) == normalized
    assert reference.api_host == api_host
    assert parse_reference(str(reference)) == reference


def test_parts() -> None:
    reference = parse_reference(f"127.0.0.1:5000/library/busybox:v1@{D64}")
    assert (reference.domain, reference.path, reference.tag, reference.digest) == (
        "127.0.0.1:5000", "library/busybox", "v1", D64)
    assert reference.name == "127.0.0.1:5000/library/busybox"
    assert reference.object == D64  # the digest is what gets pulled
    assert parse_reference("a:v1").object == "v1"
    assert parse_reference("a", default_tag=False).tag is None


@pytest.mark.parametrize(("text", "says"), [
    pytest.param("", "reference is empty", id="empty"),
    pytest.param("Busybox", "must be lowercase", id="uppercase-path"),
    pytest.param("host/Foo/bar", "must be lowercase", id="uppercase-later-component"),
    pytest.param("a b", "whitespace", id="space"),
    pytest.param(" busybox", "whitespace", id="leading-space"),
    pytest.param("a//b", "empty path component", id="double-slash"),
    pytest.param("a/", "empty path component", id="trailing-slash"),
    pytest.param("host:5000/", "no repository path", id="domain-only"),
    pytest.param(":tag", "no repository name", id="no-name"),
    pytest.param("-a", 'invalid path component "-a"', id="leading-dash"),
    pytest.param("a..b", 'invalid path component "a..b"', id="double-dot"),
    pytest.param("a___b", 'invalid path component "a___b"', id="triple-underscore"),
    pytest.param("a:", 'invalid tag ""', id="empty-tag"),
    pytest.param("a:.x", 'invalid tag ".x"', id="tag-leading-dot"),
    pytest.param("a:" + "t" * 129, "invalid tag", id="tag-too-long"),
    pytest.param("a:t@g", "digest", id="bad-digest"),
    pytest.param("a@sha256:abc", "exactly 64", id="short-digest"),
    pytest.param("a@md5:" + "a" * 32, 'unsupported algorithm "md5"', id="md5"),
    pytest.param(f"a@{D64}@{D64}", 'more than one "@"', id="two-digests"),
    pytest.param("host:99999/a", 'invalid registry port "99999"', id="port-range"),
    pytest.param("host:abc/a", 'invalid registry port "abc"', id="port-letters"),
    pytest.param("-host.com/a", 'invalid registry host "-host.com"', id="bad-host"),
    pytest.param("a" * 64, "64 hexadecimal digits", id="image-id"),
    pytest.param("host.com/" + "a" * 250, "longer than 255", id="name-too-long"),
])
def test_bad_references_are_invalid_argument(text: str, says: str) -> None:
    with pytest.raises(CargoholdError) as caught:
        parse_reference(text)
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert says in caught.value.detail
    if text:
        assert f'reference "{text[:300]}' in caught.value.detail


def test_non_string_is_invalid() -> None:
    with pytest.raises(CargoholdError) as caught:
        parse_reference(5)
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT


@pytest.mark.parametrize(("header", "scheme", "params"), [
    pytest.param('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                 'scope="repository:library/busybox:pull"', "bearer",
                 {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                  "scope": "repository:library/busybox:pull"}, id="docker-hub"),
    pytest.param('Bearer realm="http://h/t?a=1,b=2", scope="repository:a:pull,push"', "bearer",
                 {"realm": "http://h/t?a=1,b=2", "scope": "repository:a:pull,push"}, id="commas-in-quotes"),
    pytest.param('Basic realm="cargohold-test"', "basic", {"realm": "cargohold-test"}, id="basic"),
    pytest.param('Bearer realm=plain,error="insufficient_scope"', "bearer",
                 {"realm": "plain", "error": "insufficient_scope"}, id="token68-ish"),
    pytest.param('Bearer realm="a\\"b"', "bearer", {"realm": 'a"b'}, id="escaped-quote"),
    pytest.param("", "", {}, id="empty"),
])
def test_parse_challenge(header: str, scheme: str, params: dict[str, str]) -> None:
    assert parse_challenge(header) == (scheme, params)
