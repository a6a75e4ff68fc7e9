"""An OCI distribution API client on httpx: resolve, fetch, push (containerd's `core/remotes/docker`).

    RegistryClient      one per daemon: the pooled httpx client, TLS settings, limits
      .repository(ref, credentials=, plain_http=, push=) -> Repository
    Repository          one repository on one registry, with its auth state
      .resolve()                   reference -> Descriptor (HEAD, GET when HEAD says too little)
      .fetch_manifest(desc)        the manifest bytes, at most 4 MiB, digest and size verified
      .fetch(desc, store)          any blob into the content store, streamed through an ingest
      .push_blob(desc, store, mount_from=)   HEAD, cross-repo mount, POST + PUT upload
      .push_manifest(desc, data, tag=)

Auth lives in one place, `Repository._send`: a 401 carrying `WWW-Authenticate: Bearer
realm=...,service=...,scope=...` is answered by fetching a token from the realm (anonymous,
or with the basic credentials) and retrying once; a `Basic` challenge is answered with the
credentials. The Authorization header goes only to the registry's own origin: httpx drops it
when a redirect (a blob served from object storage) leads to another host.

TLS is verified against the system's CAs plus the files of an optional CA directory;
plain HTTP only for `plain_http` or a registry listed as insecure. Failures are
CargoholdErrors naming the reference or blob: NOT_FOUND (404), UNAUTHENTICATED (401/403,
refused token), UNAVAILABLE (unreachable, TLS, 5xx, 429, cut mid-blob), TOO_LARGE
(manifest over the limit), INVALID_ARGUMENT (digest or size mismatch, unknown media type,
other refusals). Credentials and tokens never appear in an error or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

import httpx

from ..content import ContentStore, Writer
from ..content.digests import digest_of, hasher, validate_digest
from ..errors import CargoholdError, ErrorKind, invalid
from .descriptors import (
    DOCKER_FOREIGN_LAYER,
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    MANIFEST_TYPES,
    Descriptor,
)
from .references import Reference

log = logging.getLogger(__name__)

T = TypeVar("T")

# Manifests are read whole into memory; containerd and distribution cap them at 4 MiB.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Bytes per chunk when streaming a blob from the registry into an ingest.
DOWNLOAD_CHUNK = 1024 * 1024
# Seconds to connect, and to wait for any one read or write, before the registry counts as down.
DEFAULT_TIMEOUT = 30.0
# Registry error bodies are quoted in details, cut to this length.
MAX_QUOTED = 200

Progress = Callable[[Descriptor, int], None]


@dataclass(frozen=True)
class Credentials:
    """Basic credentials (username + password) or a bearer token. Never printed."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def basic(self) -> httpx.BasicAuth | None:
        if self.username is None:
            return None
        return httpx.BasicAuth(self.username, self.password or "")


def tls_context(ca_dir: Path | None = None) -> ssl.SSLContext:
    """The system's CAs, plus every *.crt / *.pem file in `ca_dir`."""
    context = ssl.create_default_context()
    if ca_dir is not None:
        for path in sorted(ca_dir.iterdir()):
            if path.suffix in (".crt", ".pem") and path.is_file():
                context.load_verify_locations(cafile=str(path))
    return context


def make_ref_key(desc: Descriptor) -> str:
    """The ingest ref of a fetched blob, by kind and digest (containerd's `remotes.MakeRefKey`).

    Naming ingests by digest is what makes two pulls of one blob share one download.
    """
    if desc.media_type in INDEX_TYPES:
        kind = "index"
    elif desc.media_type in MANIFEST_TYPES:
        kind = "manifest"
    elif "layer" in desc.media_type or "rootfs" in desc.media_type:
        kind = "layer"
    elif "config" in desc.media_type:
        kind = "config"
    else:
        kind = "unknown"
    return f"{kind}-{desc.digest}"


class RegistryClient:
    """The daemon's registry client: one pooled httpx client shared by every repository."""

    def __init__(self, *, ca_dir: Path | None = None, insecure_registries: Iterable[str] = (),
                 timeout: float = DEFAULT_TIMEOUT, max_manifest_bytes: int = MAX_MANIFEST_BYTES,
                 trust_env: bool = True) -> None:
        self.insecure_registries = frozenset(insecure_registries)
        self.max_manifest_bytes = max_manifest_bytes
        if ca_dir is not None and not ca_dir.is_dir():
            raise ValueError(f"--registry-ca {ca_dir} is not a directory")
        self._ca_dir, self._timeout, self._trust_env = ca_dir, timeout, trust_env
        self._client: httpx.AsyncClient | None = None

    @property
    def _http(self) -> httpx.AsyncClient:
        # Made on first use: loading the system's CAs takes 20 ms, which a daemon that never
        # talks to a registry (and every test's daemon) need not pay at start.
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=tls_context(self._ca_dir), timeout=httpx.Timeout(self._timeout), follow_redirects=True,
                trust_env=self._trust_env, headers={"User-Agent": "cargohold"},
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def repository(self, reference: Reference, *, credentials: Credentials | None = None,
                   plain_http: bool = False, push: bool = False) -> Repository:
        """A handle on `reference`'s repository; `push` asks tokens for pull and push."""
        insecure = plain_http or reference.domain in self.insecure_registries
        return Repository(self, reference, credentials, "http" if insecure else "https", push)


class Repository:
    """One repository of one registry. Holds the token it was given; not shared between users."""

    def __init__(self, client: RegistryClient, reference: Reference, credentials: Credentials | None,
                 scheme: str, push: bool) -> None:
        self.reference = reference
        self._client = client
        self._http = client._http
        self._credentials = credentials
        self._host = reference.api_host
        self._base = f"{scheme}://{self._host}/v2/{reference.path}"
        self._scopes = {f"repository:{reference.path}:{'pull,push' if push else 'pull'}"}
        # Set once a challenge was answered (or a token given): sent on every later request.
        self._authorization: str | None = None
        if credentials is not None and credentials.token is not None:
            self._authorization = f"Bearer {credentials.token}"

    # auth and transport

    async def _send(self, method: str, url: str | httpx.URL, *, headers: dict[str, str] | None = None,
                    content: bytes | AsyncIterator[bytes] | None = None, what: str) -> httpx.Response:
        """Send a request, answering one auth challenge. The response is open (stream it or close it).

        A streamed body cannot be replayed, so callers send one only after a bodiless request
        to the same registry has settled the auth.
        """
        answered = False
        while True:
            request_headers = dict(headers or {})
            if self._authorization is not None:
                request_headers["Authorization"] = self._authorization
            request = self._http.build_request(method, url, headers=request_headers, content=content)
            response = await self._transport(request, what)
            if response.status_code != 401 or answered or isinstance(content, AsyncIterator):
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            await response.aclose()
            await self._answer(challenge, what)
            answered = True

    async def _transport(self, request: httpx.Request, what: str) -> httpx.Response:
        try:
            return await self._http.send(request, stream=True)
        except (httpx.HTTPError, httpx.InvalidURL) as error:  # unreachable, TLS, too many redirects, bad Location
            raise self._unavailable(error, what) from None

    def _unavailable(self, error: Exception, what: str) -> CargoholdError:
        reason = str(error) or type(error).__name__
        hint = ""
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            hint = "; its TLS certificate is not trusted (add its CA to the registry CA directory)"
        elif "WRONG_VERSION_NUMBER" in reason or "wrong version number" in reason:
            hint = "; it does not speak TLS (use plain_http for a plain HTTP registry)"
        return CargoholdError(ErrorKind.UNAVAILABLE,
                              f"registry {self._host} is unavailable for {what}: {_quote(reason)}{hint}")

    async def _answer(self, challenge: str, what: str) -> None:
        scheme, params = parse_challenge(challenge)
        credentials = self._credentials
        if scheme == "basic":
            if credentials is None or credentials.username is None:
                raise CargoholdError(ErrorKind.UNAUTHENTICATED,
                                     f"registry {self._host} needs credentials for {what}")
            pair = f"{credentials.username}:{credentials.password or ''}".encode()
            self._authorization = f"Basic {base64.b64encode(pair).decode()}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise CargoholdError(ErrorKind.UNAUTHENTICATED, f"registry {self._host} refused {what} "
                                 f"with an authentication scheme Cargohold does not speak ({_quote(scheme)})")
        if credentials is not None and credentials.token is not None and credentials.username is None:
            raise CargoholdError(ErrorKind.UNAUTHENTICATED, f"registry {self._host} refused the token for {what}")
        scopes = set(self._scopes)
        if params.get("scope"):
            scopes.update(params["scope"].split(" "))
        log.debug("registry %s: fetching a token for %s (%s)", self._host, " ".join(sorted(scopes)),
                  "with credentials" if credentials is not None else "anonymous")
        self._authorization = f"Bearer {await self._fetch_token(params, sorted(scopes), what)}"

    async def _fetch_token(self, params: dict[str, str], scopes: list[str], what: str) -> str:
        realm = params["realm"]
        query = [("scope", scope) for scope in scopes]
        if "service" in params:
            query.insert(0, ("service", params["service"]))
        separator = "&" if "?" in realm else "?"
        url = f"{realm}{separator}{urlencode(query)}"
        basic = self._credentials.basic if self._credentials is not None else None
        try:
            response = await self._http.get(url, auth=basic) if basic else await self._http.get(url)
        except httpx.HTTPError as error:
            raise CargoholdError(ErrorKind.UNAVAILABLE, f"token service of registry {self._host} is unavailable "
                                 f"for {what}: {_quote(str(error))}") from None
        except httpx.InvalidURL:
            raise CargoholdError(ErrorKind.UNAVAILABLE,
                                 f"registry {self._host} named an invalid token realm") from None
        if response.status_code in (401, 403):
            raise CargoholdError(ErrorKind.UNAUTHENTICATED, f"token service of registry {self._host} refused "
                                 f"{'the credentials' if basic else 'anonymous access'} for {what}")
        if response.status_code != 200:
            raise CargoholdError(ErrorKind.UNAVAILABLE, f"token service of registry {self._host} answered "
                                 f"{response.status_code} for {what}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise CargoholdError(ErrorKind.UNAVAILABLE,
                                 f"token service of registry {self._host} sent no token for {what}")
        return token

    async def _refuse(self, response: httpx.Response, what: str) -> CargoholdError:
        """The error for an unsuccessful response (read and closed here)."""
        try:
            body = await response.aread()
        except (httpx.HTTPError, httpx.StreamError):  # a HEAD, or a response already closed
            body = b""
        finally:
            await response.aclose()
        status = response.status_code
        said = _registry_errors(body)
        said = f": {said}" if said else ""
        if status == 401:
            detail = ("refused the credentials" if self._credentials else "needs credentials")
            return CargoholdError(ErrorKind.UNAUTHENTICATED, f"registry {self._host} {detail} for {what}{said}")
        if status == 403:
            return CargoholdError(ErrorKind.UNAUTHENTICATED, f"registry {self._host} denied access to {what}{said}")
        if status == 404:
            return CargoholdError(ErrorKind.NOT_FOUND, f"{what} not found in registry {self._host}{said}")
        if status == 413:
            return CargoholdError(ErrorKind.TOO_LARGE, f"registry {self._host} refused {what} as too large{said}")
        if status in (408, 429) or status >= 500:
            return CargoholdError(ErrorKind.UNAVAILABLE, f"registry {self._host} answered {status} for {what}{said}")
        return invalid(f"registry {self._host} refused {what} with {status}{said}")

    # pull

    async def resolve(self) -> Descriptor:
        """The descriptor the reference names (its digest wins over its tag). NOT_FOUND if absent."""
        reference = self.reference
        what = f'image "{reference}"'
        url = f"{self._base}/manifests/{reference.object}"
        accept = {"Accept": ", ".join(MANIFEST_ACCEPT)}
        response = await self._send("HEAD", url, headers=accept, what=what)
        await response.aclose()
        if response.status_code == 200:
            media_type = _media_type(response)
            digest = response.headers.get("Docker-Content-Digest")
            length = response.headers.get("Content-Length")
            if digest is not None and reference.digest is not None and digest != reference.digest:
                raise invalid(f"registry {self._host} answered {what} with digest {digest}")
            if reference.digest is not None:
                digest = reference.digest
            if (digest is not None and length is not None and length.isdigit()
                    and (media_type in INDEX_TYPES or media_type in MANIFEST_TYPES)):
                return Descriptor(media_type, validate_digest(digest), int(length))
        elif response.status_code != 405:
            raise await self._refuse(response, what)
        # HEAD said too little (no digest, no length, a vague type): GET, hash, decide.
        data, media_type, header_digest = await self._get_manifest(url, accept, what)
        digest = reference.digest or digest_of(data)
        _verify(data, digest, None, what)
        if header_digest is not None and reference.digest is None and header_digest != digest:
            raise invalid(f"registry {self._host} sent {what} with digest {digest} "
                          f"but announced {header_digest}")
        return Descriptor(_manifest_type(media_type, data, what), digest, len(data))

    async def fetch_manifest(self, desc: Descriptor) -> bytes:
        """The manifest or index `desc` names, verified against its digest and size."""
        what = f"manifest {desc.digest} of {self.reference.name}"
        if desc.size > self._client.max_manifest_bytes:
            raise CargoholdError(ErrorKind.TOO_LARGE, f"{what} is {desc.size} bytes; manifests are limited "
                                 f"to {self._client.max_manifest_bytes}")
        url = f"{self._base}/manifests/{desc.digest}"
        data, _, _ = await self._get_manifest(url, {"Accept": ", ".join(MANIFEST_ACCEPT)}, what)
        _verify(data, desc.digest, desc.size, what)
        return data

    async def _get_manifest(self, url: str, headers: dict[str, str], what: str) -> tuple[bytes, str, str | None]:
        limit = self._client.max_manifest_bytes
        too_large = CargoholdError(ErrorKind.TOO_LARGE, f"{what} is larger than {limit} bytes; "
                                   "manifests are limited to 4 MiB")
        response = await self._send("GET", url, headers=headers, what=what)
        if response.status_code != 200:
            raise await self._refuse(response, what)
        try:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise too_large
            chunks, received = [], 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > limit:
                    raise too_large
                chunks.append(chunk)
        except httpx.HTTPError as error:
            raise self._unavailable(error, what) from None
        finally:
            await response.aclose()
        return b"".join(chunks), _media_type(response), response.headers.get("Docker-Content-Digest")

    async def fetch(self, desc: Descriptor, store: ContentStore, on_progress: Progress | None = None) -> None:
        """Put the blob `desc` into `store`, verified. Nothing to do if it is there already.

        Blobs stream through an ingest named by digest (`make_ref_key`): never held in memory,
        and a concurrent fetch of the same blob waits, then finds it committed. A digest or
        size mismatch leaves no blob and no ingest; a transfer cut short keeps the ingest,
        which the next fetch resumes with a Range request.
        """
        if desc.media_type == DOCKER_FOREIGN_LAYER:
            raise invalid(f"blob {desc.digest} of {self.reference.name} is a foreign layer "
                          f"({desc.media_type}); Cargohold does not fetch foreign layers")
        if desc.is_manifest:
            data = await self.fetch_manifest(desc)
            await store.put(data, desc.digest, ref=make_ref_key(desc))
            if on_progress is not None:
                on_progress(desc, len(data))
            return
        if await store.exists(desc.digest):
            if on_progress is not None:
                on_progress(desc, desc.size)
            return
        what = f"blob {desc.digest} of {self.reference.name}"
        try:
            async with store.writer(make_ref_key(desc), total=desc.size, expected=desc.digest) as writer:
                try:
                    await self._download(desc, writer, what, on_progress)
                    await writer.commit()
                except CargoholdError as error:
                    # Keep only what a retry can resume: bytes of a transfer that was cut.
                    if writer.committed is None and not (error.kind is ErrorKind.UNAVAILABLE and writer.offset):
                        await writer.abort()
                    if error.kind is ErrorKind.INVALID_ARGUMENT and error.detail.startswith("ingest "):
                        raise invalid(f"{what} from registry {self._host} does not match its descriptor: "
                                      f"{error.detail.split(': ', 1)[-1]}") from None
                    raise
        except CargoholdError as error:
            if error.kind is not ErrorKind.ALREADY_EXISTS:
                raise

    async def _download(self, desc: Descriptor, writer: Writer, what: str,
                        on_progress: Progress | None) -> None:
        headers = {}
        resuming = 0 < writer.offset < desc.size
        if resuming:
            log.debug("resuming %s at byte %d of %d", what, writer.offset, desc.size)
            headers["Range"] = f"bytes={writer.offset}-"
        elif writer.offset:
            await writer.reset()
        response = await self._send("GET", f"{self._base}/blobs/{desc.digest}", headers=headers, what=what)
        if response.status_code not in (200, 206):
            raise await self._refuse(response, what)
        try:
            if response.status_code == 200 and writer.offset:
                await writer.reset()  # the server ignored the Range: start over
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and writer.offset + int(length) > desc.size:
                raise invalid(f"{what}: registry {self._host} announced {writer.offset + int(length)} bytes, "
                              f"the descriptor says {desc.size}")
            # Batch what the socket yields into writes of DOWNLOAD_CHUNK (fewer thread hops), and
            # keep every received byte when the transfer breaks, so a resume starts exactly there.
            pending = bytearray()
            try:
                async for chunk in response.aiter_raw():
                    pending += chunk
                    if len(pending) >= DOWNLOAD_CHUNK:
                        batch = bytes(pending)
                        pending.clear()
                        await writer.write(batch)
                        if on_progress is not None:
                            on_progress(desc, writer.offset)
            finally:
                if pending:
                    batch = bytes(pending)
                    pending.clear()
                    await writer.write(batch)
            if on_progress is not None:
                on_progress(desc, writer.offset)
        except httpx.HTTPError as error:
            raise CargoholdError(ErrorKind.UNAVAILABLE, f"registry {self._host} stopped sending {what} after "
                                 f"{writer.offset} of {desc.size} bytes: {_quote(str(error) or type(error).__name__)}"
                                 "; the next pull resumes it") from None
        finally:
            await response.aclose()

    # push

    async def blob_exists(self, desc: Descriptor) -> bool:
        what = f"blob {desc.digest} of {self.reference.name}"
        response = await self._send("HEAD", f"{self._base}/blobs/{desc.digest}", what=what)
        await response.aclose()
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise await self._refuse(response, what)

    async def push_blob(self, desc: Descriptor, store: ContentStore, mount_from: str | None = None,
                        on_progress: Progress | None = None) -> str:
        """Upload blob `desc` from `store` unless the registry has it.

        Returns "exists" (nothing sent), "mounted" (cross-repo mount from the repository path
        `mount_from` on the same registry) or "uploaded". The body streams from the store;
        `on_progress` hears the bytes handed to the connection so far.
        """
        what = f"blob {desc.digest} of {self.reference.name}"
        info = await store.info(desc.digest)
        if info.size != desc.size:
            raise invalid(f"{what}: the content store holds {info.size} bytes, the descriptor says {desc.size}")
        if await self.blob_exists(desc):
            return "exists"
        url = f"{self._base}/blobs/uploads/"
        if mount_from is not None and mount_from != self.reference.path:
            url += "?" + urlencode({"mount": desc.digest, "from": mount_from})
        response = await self._send("POST", url, headers={"Content-Length": "0"}, what=what)
        await response.aclose()
        if response.status_code == 201:
            return "mounted"
        if response.status_code != 202:
            raise await self._refuse(response, what)
        location = response.headers.get("Location")
        if not location:
            raise invalid(f"registry {self._host} started an upload of {what} without a Location")
        upload = response.url.join(location)
        upload = upload.copy_merge_params({"digest": desc.digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)}
        async with aclosing(await store.stream(desc.digest)) as body:
            content = body if on_progress is None else _counted(body, desc, on_progress)
            response = await self._send("PUT", upload, headers=headers, content=content, what=what)
            await response.aclose()
        if response.status_code != 201:
            raise await self._refuse(response, what)
        return "uploaded"

    async def push_manifest(self, desc: Descriptor, data: bytes, tag: str | None = None) -> None:
        """PUT a manifest or index under `tag` (default: the reference's tag, else its digest)."""
        _verify(data, desc.digest, desc.size, f"manifest {desc.digest}")
        target = tag or self.reference.tag or desc.digest
        what = f'manifest {desc.digest} as "{self.reference.name}:{target}"'
        response = await self._send("PUT", f"{self._base}/manifests/{target}",
                                    headers={"Content-Type": desc.media_type}, content=data, what=what)
        await response.aclose()
        if response.status_code not in (200, 201):
            raise await self._refuse(response, what)
        answered = response.headers.get("Docker-Content-Digest")
        if answered is not None and answered != desc.digest:
            raise invalid(f"registry {self._host} stored {what} under digest {answered}")


async def _counted(chunks: AsyncIterator[bytes], desc: Descriptor, on_progress: Progress) -> AsyncIterator[bytes]:
    """`chunks`, telling `on_progress` the running total after each is taken."""
    sent = 0
    async for chunk in chunks:
        yield chunk
        sent += len(chunk)
        on_progress(desc, sent)


async def each_at_most(limit: int, items: Iterable[T], action: Callable[[T], Awaitable[object]]) -> None:
    """`action` on every item, at most `limit` at once (transfers with one registry). The
    first failure is raised as itself: the others are its echoes (cancelled siblings)."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> None:
        async with gate:
            await action(item)

    try:
        async with asyncio.TaskGroup() as group:
            for item in items:
                group.create_task(one(item))
    except BaseExceptionGroup as failed:
        errors = [e for e in failed.exceptions if isinstance(e, CargoholdError)]
        raise (errors[0] if errors else failed.exceptions[0]) from None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://auth",service="registry",scope="a b"` -> ("bearer", {...}).

    Quoted values may contain commas and escaped quotes (RFC 9110 auth-param).
    """
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            value = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(value)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


def _media_type(response: httpx.Response) -> str:
    value: str = response.headers.get("Content-Type", "")
    return value.split(";")[0].strip()


def _manifest_type(media_type: str, data: bytes, what: str) -> str:
    """The manifest's media type: the header's when it is one we know, else the body's `mediaType`."""
    if media_type in INDEX_TYPES or media_type in MANIFEST_TYPES:
        return media_type
    try:
        document = json.loads(data)
        declared = document.get("mediaType") if isinstance(document, dict) else None
    except ValueError:
        declared = None
    if isinstance(declared, str) and (declared in INDEX_TYPES or declared in MANIFEST_TYPES):
        return declared
    raise invalid(f"{what} has media type {_quote(declared or media_type or 'none')}, which Cargohold does not "
                  "support (OCI index or manifest, Docker manifest list or schema 2)")


def _verify(data: bytes, digest: str, size: int | None, what: str) -> None:
    if size is not None and len(data) != size:
        raise invalid(f"{what}: got {len(data)} bytes, expected {size}")
    hashed = hasher(digest)
    hashed.update(data)
    actual = f"{hashed.name}:{hashed.hexdigest()}"
    if actual != digest:
        raise invalid(f"{what}: content has digest {actual}, expected {digest}")


def _registry_errors(body: bytes) -> str:
    """The registry's `{"errors": [{"code", "message"}]}` as a short phrase ("" if none)."""
    try:
        document = json.loads(body)
        errors = document.get("errors") if isinstance(document, dict) else None
    except ValueError:
        return ""
    if not isinstance(errors, list):
        return ""
    phrases = []
    for item in errors[:3]:
        if isinstance(item, dict):
            phrases.append(" ".join(str(item[k]) for k in ("code", "message") if item.get(k)))
    return _quote("; ".join(p for p in phrases if p))


def _quote(text: str) -> str:
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + "..."
