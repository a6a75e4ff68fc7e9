"""Fixtures for image tests: a real registry (Debian's docker-registry, distribution 2.8) and
test images made locally with umoci and skopeo.

Without docker-registry, skopeo, umoci or htpasswd these tests skip on a developer machine
and FAIL under CI=true (`make test-packages` installs them). Every registry runs on
127.0.0.1 on a free port with its storage and config in a temp dir, and is stopped by pid.

Images pushed to the session's plain registry (`registry` fixture), repository
`library/busybox`:
  latest   OCI manifest, one gzip layer (busybox-static rootfs), made by umoci
  two      OCI manifest, three layers: + /etc/hello, + a whiteout of /etc/group
  v2s2     `latest` converted by skopeo to a Docker schema 2 manifest
  multi    an OCI index written by the fixture: latest as linux/amd64, two as linux/arm64
  list     a Docker manifest list written by the fixture: v2s2 as linux/amd64
Tests that write to a registry use repositories of their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.config import Settings
from app.images.descriptors import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)
from app.models import Mount
from app.snapshots.mounts import mount_all, unmount
from tests.conftest import free_port, in_process_client, stop_process
from tests.rootfs import write_busybox_tar

REQUIRED = ("docker-registry", "skopeo", "umoci", "htpasswd", "busybox")
REPOSITORY = "library/busybox"
USERNAME = "alice"
PASSWORD = "correct horse battery staple"


def require_registry_tools() -> None:
    missing = [binary for binary in REQUIRED if shutil.which(binary) is None]
    if not missing:
        return
    problem = f"missing {', '.join(missing)}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"image tests cannot run ({problem}); CI must install docker-registry, skopeo, umoci, "
                    "apache2-utils and busybox-static (make test-packages)")
    pytest.skip(f"image tests need docker-registry, skopeo, umoci, htpasswd and busybox ({problem})")


def run(*args: str | Path) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass
class Registry:
    """A running docker-registry: `host` is 127.0.0.1:<port>, `data` its storage root."""

    host: str
    directory: Path
    process: subprocess.Popen[bytes]
    credentials: tuple[str, str] | None = None
    pki: Pki | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://{self.host}"

    @property
    def log(self) -> str:
        return (self.directory / "registry.log").read_text(errors="replace")

    def blob_gets(self, digest: str) -> int:
        """GET requests for a blob seen in the access log (the registry logs one line each)."""
        return sum(1 for line in self.log.splitlines() if '"GET /v2/' in line and f"/blobs/{digest} " in line)

    def upload_requests(self, repository: str, method: str = "POST") -> int:
        """Requests of `method` to `repository`'s blob uploads in the access log: POST starts an
        upload (or asks for a cross-repository mount, `?mount=`), PUT sends the bytes."""
        return sum(1 for line in self.log.splitlines() if f'"{method} /v2/{repository}/blobs/uploads/' in line)

    def mounts(self, repository: str) -> int:
        """Cross-repository mounts into `repository` the registry answered 201 (done)."""
        return sum(1 for line in self.log.splitlines()
                   if f'"POST /v2/{repository}/blobs/uploads/?' in line and "mount=" in line
                   and '" 201 ' in line)

    def blob_data(self, digest: str) -> Path:
        """Where the registry's filesystem driver keeps a blob's bytes."""
        hexdigest = digest.split(":", 1)[1]
        return (self.directory / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexdigest[:2]
                / hexdigest / "data")

    def _creds(self, flag: str) -> list[str]:
        return [flag, f"{self.credentials[0]}:{self.credentials[1]}"] if self.credentials else []

    def push_layout(self, layout: Path, tag: str, repository: str = REPOSITORY, dest_tag: str | None = None,
                    fmt: str | None = None) -> str:
        """skopeo copy oci:<layout>:<tag> to this registry; returns the pushed reference."""
        reference = f"{self.host}/{repository}:{dest_tag or tag}"
        extra = ["--format", fmt] if fmt else []
        run("skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false", *self._creds("--dest-creds"),
            *extra, f"oci:{layout}:{tag}", f"docker://{reference}")
        return reference

    def raw_manifest(self, reference: str) -> bytes:
        """The manifest bytes as skopeo reads them (independent of the code under test)."""
        done = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", *self._creds("--creds"),
                               f"docker://{reference}"], capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"skopeo inspect failed: {done.stderr.decode(errors='replace')}")
        return done.stdout

    def put_blob(self, repository: str, data: bytes) -> str:
        """A monolithic upload with plain httpx; returns the blob's digest."""
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        auth = httpx.BasicAuth(*self.credentials) if self.credentials else None
        with httpx.Client(base_url=self.url, auth=auth, trust_env=False) as client:
            started = client.post(f"/v2/{repository}/blobs/uploads/")
            started.raise_for_status()
            # merge: the Location carries the upload's own state in its query string.
            upload = started.url.join(started.headers["Location"]).copy_merge_params({"digest": digest})
            done = client.put(upload, content=data,
                              headers={"Content-Type": "application/octet-stream"})
            done.raise_for_status()
        return digest

    def put_manifest(self, repository: str, tag: str, media_type: str, data: bytes) -> str:
        """PUT a manifest with plain httpx; returns its digest."""
        auth = httpx.BasicAuth(*self.credentials) if self.credentials else None
        response = httpx.put(f"{self.url}/v2/{repository}/manifests/{tag}", content=data, auth=auth,
                             headers={"Content-Type": media_type}, trust_env=False)
        response.raise_for_status()
        return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class Pki:
    """A CA (alone in `ca_dir`, as `--registry-ca DIR` would hold it) and a server certificate for 127.0.0.1."""

    ca_dir: Path
    certificate: Path
    key: Path

    @property
    def ca(self) -> Path:
        return self.ca_dir / "ca.crt"


def make_pki(directory: Path) -> Pki:
    """openssl: a CA, and a certificate for 127.0.0.1/localhost signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_dir = directory / "ca"
    ca_dir.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-keyout", directory / "ca.key", "-out", ca_dir / "ca.crt", "-days", "2",
        "-subj", "/CN=cargohold test CA")
    run("openssl", "req", *ec, "-keyout", directory / "server.key", "-out", directory / "server.csr",
        "-subj", "/CN=127.0.0.1")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                       "extendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", directory / "server.csr", "-CA", ca_dir / "ca.crt", "-CAkey",
        directory / "ca.key", "-CAcreateserial", "-out", directory / "server.crt", "-days", "2",
        "-extfile", directory / "ext.cnf")
    return Pki(ca_dir, directory / "server.crt", directory / "server.key")


@dataclass
class Seen:
    """A request an HttpServer received (header names lowercase)."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Send the headers (with the full Content-Length) but only this many body bytes, then hang up.
    cut_after: int | None = None
    # Send this many body bytes, then send nothing more until the server is stopped.
    stall_after: int | None = None


class HttpServer:
    """A small stdlib HTTP server on 127.0.0.1 in a thread, answering with `handle(seen) -> Reply`.

    For what a real registry will not do on demand: issue tokens, redirect blobs to another
    origin, stop in the middle of a blob. Every request is kept in `seen`.
    """

    def __init__(self, handle: Callable[[Seen], Reply]) -> None:
        self.seen: list[Seen] = []
        self.stopping = threading.Event()  # releases the replies that stall
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                owner.seen.append(seen)
                reply = handle(seen)
                self.send_response(reply.status)
                headers = {"Content-Length": str(len(reply.body)), **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD" and reply.stall_after is not None:
                    self.wfile.write(reply.body[:reply.stall_after])
                    self.wfile.flush()
                    owner.stopping.wait()
                    return
                if self.command != "HEAD":
                    self.wfile.write(reply.body if reply.cut_after is None else reply.body[:reply.cut_after])
                if reply.cut_after is not None:
                    self.wfile.flush()
                    self.close_connection = True

            do_HEAD = do_GET  # noqa: N815 - the stdlib's naming

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="test.http-server", daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


TOKEN_SERVICE = "cargohold-test-registry"
TOKEN_ISSUER = "cargohold-test-token-issuer"


@dataclass
class TokenRequest:
    user: str | None
    service: str | None
    scopes: list[str]


class TokenServer(HttpServer):
    """A token service for distribution's `auth.token`: JWTs signed RS256 (openssl) with x5c.

    USERNAME/PASSWORD get every action asked for; anonymous callers get `pull` on
    repositories under `public/` only; a wrong password is 401.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(self._issue)
        directory.mkdir(parents=True, exist_ok=True)
        self.key = directory / "token.key"
        self.certificate = directory / "token.crt"
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out",
            self.certificate, "-days", "2", "-subj", "/CN=cargohold test token issuer")
        pem = self.certificate.read_text().strip().splitlines()
        self._x5c = "".join(line for line in pem if not line.startswith("-----"))
        self.requests: list[TokenRequest] = []
        self.issued: list[str] = []  # every token handed out, for tests that look for leaks

    def _issue(self, seen: Seen) -> Reply:
        query = parse_qs(urlsplit(seen.path).query)
        user = None
        authorization = seen.headers.get("authorization")
        if authorization is not None:
            name, _, password = base64.b64decode(authorization.removeprefix("Basic ")).decode().partition(":")
            if (name, password) != (USERNAME, PASSWORD):
                return Reply(401, {"Content-Type": "application/json"}, b'{"details": "wrong credentials"}')
            user = name
        scopes = query.get("scope", [])
        self.requests.append(TokenRequest(user, query["service"][0] if "service" in query else None, scopes))
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            repository, _, actions = rest.rpartition(":")
            wanted = actions.split(",")
            granted = wanted if user else [a for a in wanted if a == "pull" and repository.startswith("public/")]
            if granted:
                access.append({"type": kind, "name": repository, "actions": granted})
        now = int(time.time())
        claims = {"iss": TOKEN_ISSUER, "sub": user or "", "aud": TOKEN_SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        token = self._sign({"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}, claims)
        self.issued.append(token)
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        return Reply(200, {"Content-Type": "application/json"}, body)

    def _sign(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), capture_output=True, check=True).stdout
        return f"{signing_input}.{_b64url(signature)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _config(directory: Path, port: int, auth: str | None, pki: Pki | None = None,
            token: TokenServer | None = None) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {directory / 'data'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if pki is not None:
        lines += ["  tls:", f"    certificate: {pki.certificate}", f"    key: {pki.key}"]
    if auth == "htpasswd":
        lines += ["auth:", "  htpasswd:", "    realm: cargohold-test", f"    path: {directory / 'htpasswd'}"]
    if token is not None:
        lines += ["auth:", "  token:", f"    realm: {token.url}/token", f"    service: {TOKEN_SERVICE}",
                  f"    issuer: {TOKEN_ISSUER}", f"    rootcertbundle: {token.certificate}"]
    return "\n".join(lines) + "\n"


@contextmanager
def running_registry(directory: Path, auth: str | None = None, pki: Pki | None = None,
                     token: TokenServer | None = None) -> Iterator[Registry]:
    """Start `docker-registry serve` on a free port; wait for /v2/; stop it by pid afterwards.

    `auth="htpasswd"`: basic auth for USERNAME/PASSWORD; `pki`: TLS with that certificate;
    `token`: bearer tokens issued by that token server.
    """
    require_registry_tools()
    directory.mkdir(parents=True, exist_ok=True)
    credentials = None
    if auth == "htpasswd":
        # bcrypt is the only hash distribution's htpasswd auth accepts.
        (directory / "htpasswd").write_text(run("htpasswd", "-Bbn", USERNAME, PASSWORD))
        credentials = (USERNAME, PASSWORD)
    if token is not None:
        credentials = (USERNAME, PASSWORD)
    port = free_port()
    config = directory / "config.yml"
    config.write_text(_config(directory, port, auth, pki, token))
    log = open(directory / "registry.log", "wb")  # closed in finally, after the process is gone
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        registry = Registry(f"127.0.0.1:{port}", directory, process, credentials, pki)
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(pki.ca)) if pki else False
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {process.returncode}: {registry.log[-2000:]}")
            try:
                if httpx.get(f"{registry.url}/v2/", trust_env=False, timeout=1,
                             verify=verify).status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not answer /v2/ within 15 s: {registry.log[-2000:]}")
            time.sleep(0.05)
        yield registry
    finally:
        stop_process(process)
        log.close()


@pytest.fixture(scope="session")
def oci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI image layout made by umoci from the busybox rootfs, tags `latest` and `two`."""
    require_registry_tools()
    work = tmp_path_factory.mktemp("umoci")
    rootfs = work / "rootfs"
    rootfs.mkdir()
    run("tar", "-C", rootfs, "-xf", write_busybox_tar(work / "busybox.tar"))
    layout = work / "layout"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:latest")
    run("umoci", "insert", "--image", f"{layout}:latest", rootfs, "/")
    run("umoci", "config", "--image", f"{layout}:latest", "--config.cmd", "/bin/sh", "--config.env", "PATH=/bin",
        "--config.workingdir", "/", "--os", "linux", "--architecture", "amd64")
    (work / "hello").write_text("hello\n")
    run("umoci", "insert", "--image", f"{layout}:latest", "--tag", "two", work / "hello", "/etc/hello")
    run("umoci", "insert", "--image", f"{layout}:two", "--whiteout", "/etc/group")
    return layout


def push_test_images(registry: Registry, layout: Path, repository: str = REPOSITORY) -> None:
    """Push latest, two, v2s2 and the multi-platform index `multi` to `repository`."""
    for tag in ("latest", "two"):
        registry.push_layout(layout, tag, repository)
    registry.push_layout(layout, "latest", repository, dest_tag="v2s2", fmt="v2s2")
    entries = []
    for tag, arch in (("latest", "amd64"), ("two", "arm64")):
        data = registry.raw_manifest(f"{registry.host}/{repository}:{tag}")
        entries.append({"mediaType": OCI_MANIFEST, "digest": f"sha256:{hashlib.sha256(data).hexdigest()}",
                        "size": len(data), "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    registry.put_manifest(repository, "multi", OCI_INDEX, index)
    data = registry.raw_manifest(f"{registry.host}/{repository}:v2s2")
    docker_list = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    registry.put_manifest(repository, "list", DOCKER_MANIFEST_LIST, docker_list)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, oci_layout: Path) -> Iterator[Registry]:
    """A plain-HTTP, anonymous registry holding the test images (read them; write elsewhere)."""
    with running_registry(tmp_path_factory.mktemp("registry")) as started:
        push_test_images(started, oci_layout)
        yield started


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory, oci_layout: Path) -> Iterator[Registry]:
    """A plain-HTTP registry behind htpasswd basic auth (USERNAME / PASSWORD), holding `latest`."""
    with running_registry(tmp_path_factory.mktemp("auth-registry"), auth="htpasswd") as started:
        started.push_layout(oci_layout, "latest")
        yield started


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, oci_layout: Path) -> Iterator[Registry]:
    """An HTTPS registry (certificate from a CA made by openssl, `pki.ca_dir`) with htpasswd basic auth."""
    directory = tmp_path_factory.mktemp("tls-registry")
    require_registry_tools()
    with running_registry(directory, auth="htpasswd", pki=make_pki(directory / "pki")) as started:
        started.push_layout(oci_layout, "latest")
        yield started


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    require_registry_tools()
    with TokenServer(tmp_path_factory.mktemp("token-server")) as server:
        yield server


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory, oci_layout: Path,
                   token_server: TokenServer) -> Iterator[Registry]:
    """A plain-HTTP registry behind the bearer-token challenge of `token_server`; holds
    `library/busybox:latest` (credentials needed) and `public/busybox:latest` (anonymous pull)."""
    with running_registry(tmp_path_factory.mktemp("token-registry"), token=token_server) as started:
        started.push_layout(oci_layout, "latest")
        started.push_layout(oci_layout, "latest", "public/busybox")
        yield started


# --- API helpers the image tests share ---------------------------------------------


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, with its lifespan, on the test's own root."""
    async with in_process_client(settings) as client:
        yield client


@pytest.fixture
def headers(namespace: str) -> dict[str, str]:
    return {"Cargohold-Namespace": namespace}

Json = dict[str, Any]


async def pull(api: httpx.AsyncClient, headers: dict[str, str], reference: str, **extra: Any) -> httpx.Response:
    return await api.post("/images/pull", json={"reference": reference, "plain_http": True, **extra},
                          headers=headers)


async def pulled(api: httpx.AsyncClient, headers: dict[str, str], reference: str, **extra: Any) -> Json:
    response = await pull(api, headers, reference, **extra)
    assert response.status_code == 201, response.text
    image: Json = response.json()
    return image


async def snapshots(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Json]:
    response = await api.get("/snapshots", headers=headers)
    if response.status_code == 404:  # the namespace was never made
        return {}
    assert response.status_code == 200, response.text
    return {snapshot["key"]: snapshot for snapshot in response.json()["snapshots"]}


async def image_names(api: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    response = await api.get("/images", headers=headers)
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    return [image["name"] for image in response.json()["images"]]



def diff_ids_of(registry: Registry, tag: str, repository: str = REPOSITORY) -> list[str]:
    manifest = json.loads(registry.raw_manifest(f"{registry.host}/{repository}:{tag}"))
    config = registry.blob_data(manifest["config"]["digest"]).read_bytes()
    diff_ids: list[str] = json.loads(config)["rootfs"]["diff_ids"]
    return diff_ids




def push_image(registry: Registry, repository: str, tag: str, layers: list[tuple[bytes, bytes, str]],
               diff_ids: list[str] | None = None, manifest_type: str = OCI_MANIFEST) -> str:
    """Push an image of `layers` (tar, blob as sent, media type); returns the manifest digest."""
    diff_ids = diff_ids or [f"sha256:{hashlib.sha256(tar).hexdigest()}" for tar, _, _ in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    descriptors = [{"mediaType": media_type, "digest": registry.put_blob(repository, blob), "size": len(blob)}
                   for _, blob, media_type in layers]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": manifest_type, "layers": descriptors, "config": {
        "mediaType": OCI_CONFIG, "digest": registry.put_blob(repository, config), "size": len(config)}}).encode()
    return registry.put_manifest(repository, tag, manifest_type, manifest)


def blobs(settings: Settings) -> set[str]:
    directory = settings.root / "content" / "blobs" / "sha256"
    return {f"sha256:{path.name}" for path in directory.iterdir()} if directory.is_dir() else set()


def ingests(settings: Settings) -> list[str]:
    directory = settings.root / "content" / "ingest"
    return sorted(path.name for path in directory.iterdir()) if directory.is_dir() else []


def snapshot_dirs(settings: Settings) -> set[str]:
    root = settings.root / "snapshots"
    return {f"{d.name}/{e.name}" for d in root.iterdir() if d.is_dir() for e in d.iterdir()} if root.is_dir() else set()


class OneLayerImage:
    """An HttpServer serving one image, `<host>/gc/image:v1`; its layer reply can be cut short
    (`cut_after` bytes, then hang up) or stall (`stall_after` bytes, then nothing), as set
    at the time of the request."""

    def __init__(self, tar: bytes, blob: bytes, cut_after: int | None = None, stall_after: int | None = None):
        self.cut_after, self.stall_after = cut_after, stall_after
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]}}).encode()
        self.layer, config_digest = (f"sha256:{hashlib.sha256(data).hexdigest()}" for data in (blob, config))
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                               "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": self.layer,
                                           "size": len(blob)}]}).encode()
        manifest_digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"

        def handle(seen: Seen) -> Reply:
            if seen.path.endswith(("/manifests/v1", f"/manifests/{manifest_digest}")):
                return Reply(200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": manifest_digest}, manifest)
            if seen.path.endswith(config_digest):
                return Reply(200, {}, config)
            if seen.path.endswith(self.layer):
                return Reply(200, {}, blob, cut_after=self.cut_after, stall_after=self.stall_after)
            return Reply(404)

        self.server = HttpServer(handle)

    @property
    def reference(self) -> str:
        return f"{self.server.host}/gc/image:v1"

    def __enter__(self) -> OneLayerImage:
        self.server.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.__exit__(*exc_info)


@contextmanager
def mounted(mounts: list[Json], target: Path) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mount_all([Mount.model_validate(mount) for mount in mounts], target)
    try:
        yield target
    finally:
        unmount(target)


async def files_of(api: httpx.AsyncClient, headers: dict[str, str], chain_id: str, tmp_path: Path) -> set[str]:
    """The paths (relative, files and dirs) seen in a view prepared on `chain_id`."""
    response = await api.post("/snapshots", json={"key": "look", "parent": chain_id, "kind": "view"},
                              headers=headers)
    assert response.status_code == 201, response.text
    try:
        response = await api.get("/snapshots/look/mounts", headers=headers)
        assert response.status_code == 200, response.text
        with mounted(response.json(), tmp_path / "view") as root:
            return {str(path.relative_to(root)) for path in root.rglob("*")}
    finally:
        assert (await api.delete("/snapshots/look", headers=headers)).status_code == 204


async def image_events(api: httpx.AsyncClient, namespace: str) -> list[tuple[str, str]]:
    history = await api.get("/events/history", params={"limit": 1000, "filter": "topic~=^/images/"})
    assert history.status_code == 200, history.text
    return [(event["topic"], event["event"]["name"]) for event in history.json()["events"]
            if event["namespace"] == namespace]
