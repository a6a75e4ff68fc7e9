"""Image archives: reading OCI image layouts and `docker save` archives, writing OCI layout tars.

Reading. An upload is untrusted and may be large, and a `docker save` archive may put its
manifest.json last, so the body is never parsed as it arrives: `spooled()` writes it to an
unnamed file (`O_TMPFILE`: it has no name, so nothing is left behind however the import
ends, a kill -9 included) in a private directory under the daemon root, refusing it past
`ArchiveLimits.max_bytes`. A gzip, zstd, bzip2 or xz body (sniffed from its bytes) is then
decompressed into a second unnamed file under the same bound, and the tar's headers are
indexed (bounded as a layer's are: special headers at most 1 MiB, no sparse files, at most
`max_members` members). Member names are only keys of that index: nothing is ever
extracted by name; a member's bytes are read by offset from the spooled file. Links inside
the archive (a docker save links a shared layer) are followed within the index, a few hops
at most.

    OCI image layout    index.json (+ oci-layout), blobs/<algorithm>/<hex>; each image an
                        entry of index.json, its blobs found by their descriptors
    docker save         manifest.json: [{Config, RepoTags, Layers}], members named freely;
                        the config and layer tars are hashed as they are stored

`Archive.store` and `Archive.read_blob` put a member into the content store or memory with
its digest and size verified; walking manifests and unpacking are import_export.py's.

Writing. `LayoutTar` is an OCI image layout as a tar stream (oci-layout, index.json, then
each blob once, read from the content store in chunks), its length known before the first
byte (`Content-Length`). Entries have mode 0644 (dirs 0755), owner 0 and mtime 0, so an
image always exports to the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..config import Settings
from ..content import ContentStore, digest_of
from ..content.digests import hasher, validate_digest
from ..errors import CargoholdError, ErrorKind, invalid
from ..gc import Lease, Leases
from ..ondisk import PRIVATE_DIR, ensure_dir

# The layer reader's bounded tar header parsing and sniffing decompression, shared so an
# archive is held to the same rules as a layer.
from ..snapshots.layers import StrictTarInfo, decompressed
from .descriptors import DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_INDEX, Descriptor
from .references import DEFAULT_TAG, Reference, parse_reference
from .registry import MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES  # import_export.py reads manifests with it too
from .unpack import DOCKER_LAYER

OCI_LAYOUT_FILE = "oci-layout"
OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX_FILE = "index.json"
DOCKER_MANIFEST_FILE = "manifest.json"
# containerd's annotation for an image's full name; the OCI one holds only the tag.
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
# Bytes per read of a spooled member or a blob.
READ_CHUNK = 1024 * 1024
# Members with longer names (PATH_MAX) are not indexed: no layout or docker save names one.
MAX_MEMBER_NAME_BYTES = 4096
# Links followed to reach a member (a docker save links shared layers once).
MAX_LINK_HOPS = 8
_TAR_MAGIC_OFFSET = 257
_COMPRESSED = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ\x00")  # gzip, zstd, bzip2, xz
_BLOB_NAME = re.compile(r"^blobs/(sha256|sha512)/([a-f0-9]+)$")

# An upload, or an export, as a stream of chunks.
Chunks = AsyncIterator[bytes]


@dataclass(frozen=True)
class ArchiveLimits:
    """What one import may cost (see Settings for each)."""

    spool_dir: Path  # private (0700), under the daemon root
    max_bytes: int  # of the body, and again of the tar once decompressed
    max_members: int  # tar members indexed
    idle_timeout: float  # seconds the upload may send nothing

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(settings.root / "spool", settings.import_max_bytes, settings.import_archive_max_members,
                   settings.import_idle_timeout)


@dataclass(frozen=True)
class Member:
    """A regular file of the archive: where its bytes are in the spooled tar."""

    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class ArchivedImage:
    """An image an archive holds, as the archive describes it.

    OCI layout: `target` (an index.json entry). docker save: `config` and `layers` (members).
    Names: `names` are full references as written (RepoTags, `io.containerd.image.name`, a
    `ref.name` holding `/`, `:` or `@`); `tag` is a bare `ref.name` such as `latest`."""

    where: str
    names: tuple[str, ...] = ()
    tag: str | None = None
    target: Descriptor | None = None
    config: Member | None = None
    layers: tuple[Member, ...] = ()


class Archive:
    """A spooled, decompressed tar and the index of its members. Reads are by offset
    (`os.pread`), so they share no file position."""

    def __init__(self, file: IO[bytes], files: dict[str, Member], links: dict[str, str]) -> None:
        self._file = file
        self._files = files
        self._links = links

    def find(self, name: str) -> Member | None:
        """The regular file `name` (normalized as member names are), through links."""
        key = _key(name)
        for _ in range(MAX_LINK_HOPS + 1):
            member = self._files.get(key)
            if member is not None:
                return member
            target = self._links.get(key)
            if target is None:
                return None
            key = target
        return None

    def member(self, name: str, what: str) -> Member:
        member = self.find(name)
        if member is None:
            raise invalid(f"{what}: the archive has no file {_shown(name)!r}")
        return member

    def blob(self, desc: Descriptor, what: str) -> Member:
        """The member holding `desc` in an OCI layout (`blobs/<algorithm>/<hex>`), its size
        checked against the descriptor's; INVALID_ARGUMENT naming what is missing or wrong."""
        algorithm, _, encoded = desc.digest.partition(":")
        member = self.find(f"blobs/{algorithm}/{encoded}")
        if member is None:
            raise invalid(f"{what}: the archive has no blob {desc.digest} ({desc.media_type})")
        if member.size != desc.size:
            raise invalid(f"{what}: blob {desc.digest} is {member.size} bytes in the archive, but its descriptor "
                          f"says {desc.size}")
        return member

    async def read(self, member: Member, limit: int, what: str) -> bytes:
        """A small member whole (a manifest, a config); TOO_LARGE past `limit`."""
        if member.size > limit:
            raise CargoholdError(ErrorKind.TOO_LARGE, f"{what}: {_shown(member.name)!r} is {member.size} bytes; "
                                 f"at most {limit} are read")
        return await asyncio.to_thread(os.pread, self._file.fileno(), member.size, member.offset)

    async def read_blob(self, desc: Descriptor, limit: int, what: str) -> bytes:
        """A small blob of an OCI layout, its size and digest verified against `desc`."""
        data = await self.read(self.blob(desc, what), limit, what)
        actual = _digest(data, desc.digest)
        if actual != desc.digest:
            raise invalid(f"{what}: blob {desc.digest} in the archive has digest {actual}; nothing of the "
                          "archive was imported")
        return data

    async def head(self, member: Member, size: int = 6) -> bytes:
        return await asyncio.to_thread(os.pread, self._file.fileno(), min(size, member.size), member.offset)

    async def chunks(self, member: Member) -> AsyncGenerator[bytes, None]:
        done = 0
        while done < member.size:
            chunk = await asyncio.to_thread(os.pread, self._file.fileno(), min(READ_CHUNK, member.size - done),
                                            member.offset + done)
            if not chunk:
                raise invalid(f"the archive is truncated in {_shown(member.name)!r}")
            done += len(chunk)
            yield chunk

    async def store(self, member: Member, content: ContentStore, lease: Lease, what: str,
                    expected: Descriptor | None = None) -> str:
        """Write `member` into the content store through an ingest; return its digest.

        With `expected` (an OCI layout's descriptor) the digest is held in `lease` before a
        byte is written and the size and digest are checked against it; a blob already
        stored is not read again. Without (a docker save member), the digest is what the
        bytes hash to, held before the commit publishes the blob; a member named
        `blobs/<algorithm>/<hex>` must hash to its name. A mismatch or a failure leaves no
        blob and no ingest (INVALID_ARGUMENT for the archive's faults)."""
        if expected is not None:
            await lease.hold_content(expected.digest)
            ref = f"import-{expected.digest}"
        else:
            ref = f"import-{lease.id}-{hashlib.sha256(member.name.encode('utf-8', 'surrogateescape')).hexdigest()}"
        digest = expected.digest if expected is not None else None
        try:
            async with content.writer(ref, total=member.size, expected=digest) as writer:
                try:
                    if writer.offset:
                        await writer.reset()  # an ingest a crashed import left: start over
                    async with aclosing(self.chunks(member)) as chunks:
                        async for chunk in chunks:
                            await writer.write(chunk)
                    actual = writer.digest  # in the algorithm of `expected` (sha256 without)
                    if digest is None:
                        named = _named_digest(member.name)
                        if named is not None and named.startswith("sha256:") and named != actual:
                            raise invalid(f"{what}: {_shown(member.name)!r} has digest {actual}, not the one its "
                                          "name says")
                        digest = actual
                        await lease.hold_content(digest)
                    elif actual != digest:
                        raise invalid(f"{what}: blob {digest} in the archive has digest {actual}; nothing of it "
                                      "was stored")
                    return await writer.commit(member.size, digest)
                except BaseException:
                    if writer.committed is None:
                        await asyncio.shield(writer.abort())
                    raise
        except CargoholdError as error:
            if error.kind is ErrorKind.ALREADY_EXISTS and digest is not None:
                return digest  # stored already (by an earlier import or pull): the same bytes
            raise


@asynccontextmanager
async def spooled(body: AsyncIterator[bytes], limits: ArchiveLimits) -> AsyncIterator[Archive]:
    """The upload `body`, spooled, decompressed and indexed (see the module docstring).

    INVALID_ARGUMENT: not a tar (or a broken or truncated one, or broken compression), an
    upload idle for `limits.idle_timeout`; TOO_LARGE: past `limits.max_bytes` (the body or
    the decompressed tar), more than `limits.max_members` members, a special header over 1
    MiB. The spool files are closed (and so gone) when the block ends."""
    async with AsyncExitStack() as files:
        raw = await asyncio.to_thread(_spool_file, limits.spool_dir)
        files.callback(raw.close)
        await _receive(body, raw, limits)
        tar = await asyncio.to_thread(_plain_tar, raw, limits)
        if tar is not raw:
            files.callback(tar.close)
            raw.close()  # the compressed copy is no longer needed
        index, links = await asyncio.to_thread(_index, tar, limits.max_members)
        yield Archive(tar, index, links)


def _spool_file(directory: Path) -> IO[bytes]:
    ensure_dir(directory, PRIVATE_DIR)  # 0700, ours, not a link
    # TemporaryFile opens with O_TMPFILE on Linux: no name ever exists to be left behind.
    return tempfile.TemporaryFile(dir=directory)


async def _receive(body: AsyncIterator[bytes], file: IO[bytes], limits: ArchiveLimits) -> None:
    chunks = aiter(body)
    pending: list[bytes] = []
    pending_size = total = 0
    while True:
        try:
            async with asyncio.timeout(limits.idle_timeout):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise invalid(f"the upload sent nothing for {limits.idle_timeout:g} seconds; the import was "
                          "abandoned") from None
        total += len(chunk)
        if total > limits.max_bytes:
            raise CargoholdError(ErrorKind.TOO_LARGE, f"the archive is larger than the {limits.max_bytes}-byte "
                                 "import limit (--import-max-size)")
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= READ_CHUNK:  # one thread hop per MiB, not per network read
            await asyncio.to_thread(file.write, b"".join(pending))
            pending, pending_size = [], 0
    if pending:
        await asyncio.to_thread(file.write, b"".join(pending))
    await asyncio.to_thread(file.flush)


def _plain_tar(raw: IO[bytes], limits: ArchiveLimits) -> IO[bytes]:
    """`raw` itself if it is a plain tar (or nothing known), else its decompressed copy."""
    raw.seek(0)
    head = raw.read(tarfile.BLOCKSIZE)
    raw.seek(0)
    if head[_TAR_MAGIC_OFFSET:_TAR_MAGIC_OFFSET + 5] == b"ustar" or not head.startswith(_COMPRESSED):
        return raw
    copy = tempfile.TemporaryFile(dir=limits.spool_dir)
    try:
        source = io.BufferedReader(decompressed(raw, limits.max_bytes), READ_CHUNK)
        while chunk := source.read(READ_CHUNK):
            copy.write(chunk)
        copy.flush()
        return copy
    except BaseException:
        copy.close()
        raise


def _index(file: IO[bytes], max_members: int) -> tuple[dict[str, Member], dict[str, str]]:
    """The regular files and links of the tar in `file`, by normalized name."""
    size = os.fstat(file.fileno()).st_size
    if size < tarfile.BLOCKSIZE:
        raise invalid(f"the body is not a tar archive ({size} bytes, less than one tar header)")
    files: dict[str, Member] = {}
    links: dict[str, str] = {}
    count = 0
    file.seek(0)
    try:
        with tarfile.open(fileobj=file, mode="r:", tarinfo=StrictTarInfo) as tar:
            while True:
                tar._cargohold_chain = 0  # type: ignore[attr-defined]  # StrictTarInfo's count
                member = tar.next()
                if member is None:
                    break
                tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps all; we keep what we need
                count += 1
                if count > max_members:
                    raise CargoholdError(ErrorKind.TOO_LARGE, f"the archive has more than {max_members} members "
                                         "(--import-archive-max-members)")
                if member.isreg() and member.offset_data + member.size > size:
                    raise invalid(f"the archive is truncated: {_shown(member.name)!r} ends past its end")
                key = _key(member.name)
                if len(key.encode("utf-8", "surrogateescape")) > MAX_MEMBER_NAME_BYTES:
                    continue
                if member.isreg():
                    files[key] = Member(key, member.offset_data, member.size)
                    links.pop(key, None)
                elif member.issym() or member.islnk():
                    base = posixpath.dirname(key) if member.issym() else ""
                    links[key] = _key(posixpath.join(base, member.linkname))
                    files.pop(key, None)
    except CargoholdError:
        raise
    except (tarfile.TarError, EOFError) as error:
        raise invalid(f"the body is not a readable tar archive (or it is truncated): {error}") from error
    except (OverflowError, ValueError) as error:
        raise invalid(f"a tar member has a field out of range: {error}") from error
    return files, links


def _key(name: str) -> str:
    """A member name as the index keys it: relative, `./` and doubled slashes gone."""
    normal = posixpath.normpath("/" + name).lstrip("/")
    return normal


def _named_digest(name: str) -> str | None:
    match = _BLOB_NAME.match(name)
    return f"{match[1]}:{match[2]}" if match else None


def _digest(data: bytes, like: str) -> str:
    hashed = hasher(like)
    hashed.update(data)
    return f"{hashed.name}:{hashed.hexdigest()}"


def _shown(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- what the archive holds -----------------------------------------------------------------


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise invalid(f"{what} is not valid JSON") from None


async def archived_images(archive: Archive) -> list[ArchivedImage]:
    """The images `archive` holds: index.json's entries (an OCI layout), else manifest.json's
    (a docker save). INVALID_ARGUMENT for neither, a malformed file, or no image at all."""
    index = archive.find(OCI_INDEX_FILE)
    if index is not None:
        return await _layout_images(archive, index)
    manifest = archive.find(DOCKER_MANIFEST_FILE)
    if manifest is not None:
        return await _saved_images(archive, manifest)
    raise invalid("the archive is neither an OCI image layout (no index.json) nor a docker save archive "
                  "(no manifest.json)")


async def _layout_images(archive: Archive, index_member: Member) -> list[ArchivedImage]:
    layout = archive.find(OCI_LAYOUT_FILE)
    if layout is not None:
        version = _json(await archive.read(layout, MAX_MANIFEST_BYTES, OCI_LAYOUT_FILE), OCI_LAYOUT_FILE)
        found = version.get("imageLayoutVersion") if isinstance(version, dict) else None
        if found != OCI_LAYOUT_VERSION:
            raise invalid(f"oci-layout says imageLayoutVersion {str(found)[:40]!r}; Cargohold reads "
                          f"{OCI_LAYOUT_VERSION}")
    index = _json(await archive.read(index_member, MAX_MANIFEST_BYTES, OCI_INDEX_FILE), OCI_INDEX_FILE)
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise invalid("index.json has no manifests list")
    if not entries:
        raise invalid("index.json lists no image")
    images = []
    for i, entry in enumerate(entries):
        where = f"index.json: manifests[{i}]"
        target = Descriptor.from_json(entry, where)
        annotations = target.annotations or {}
        full, ref_name = annotations.get(IMAGE_NAME_ANNOTATION), annotations.get(REF_NAME_ANNOTATION)
        names: tuple[str, ...] = ()
        tag = None
        if full:
            names = (full,)
        elif ref_name and any(c in ref_name for c in "/:@"):
            names = (ref_name,)  # a full reference, as skopeo's oci-archive:FILE:NAME:TAG writes
        elif ref_name:
            tag = ref_name
        images.append(ArchivedImage(where, names=names, tag=tag, target=target))
    return images


async def _saved_images(archive: Archive, manifest_member: Member) -> list[ArchivedImage]:
    manifest = _json(await archive.read(manifest_member, MAX_MANIFEST_BYTES, DOCKER_MANIFEST_FILE),
                     DOCKER_MANIFEST_FILE)
    if not isinstance(manifest, list):
        raise invalid("manifest.json is not a list of images")
    if not manifest:
        raise invalid("manifest.json lists no image")
    images = []
    for i, entry in enumerate(manifest):
        where = f"manifest.json[{i}]"
        if not isinstance(entry, dict):
            raise invalid(f"{where} is not an object")
        config, layers, tags = entry.get("Config"), entry.get("Layers"), entry.get("RepoTags") or []
        if not isinstance(config, str):
            raise invalid(f"{where}: Config must be the name of a file of the archive")
        if not isinstance(layers, list) or not all(isinstance(layer, str) for layer in layers):
            raise invalid(f"{where}: Layers must be a list of names of files of the archive")
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise invalid(f"{where}: RepoTags must be a list of strings")
        images.append(ArchivedImage(where, names=tuple(tags), config=archive.member(config, where),
                                    layers=tuple(archive.member(layer, where) for layer in layers)))
    return images


def image_names(image: ArchivedImage, base: Reference | None) -> list[str]:
    """The normalized names of an archived image: its full names; else, for a bare tag,
    `base` (a repository) with that tag; else `base` itself (`latest` if it has no tag).
    INVALID_ARGUMENT for a name that does not parse or an image that cannot be named."""
    if image.names:
        names = []
        for name in image.names:
            try:
                names.append(str(parse_reference(name)))
            except CargoholdError as error:
                raise invalid(f"{image.where}: {error.detail}") from None
        return names
    if image.tag is not None:
        if base is None:
            raise invalid(f"{image.where} is tagged {_shown(image.tag, 130)!r} but names no repository; give "
                          f"name=REPOSITORY to import it as REPOSITORY:{_shown(image.tag, 130)}")
        try:
            return [str(base.with_tag(image.tag))]
        except CargoholdError as error:
            raise invalid(f"{image.where}: {error.detail}") from None
    if base is None:
        raise invalid(f"{image.where} has no name; give name=NAME to import it as NAME")
    return [str(base if base.tag or base.digest else base.with_tag(DEFAULT_TAG))]


async def store_saved_layer(archive: Archive, member: Member, content: ContentStore, lease: Lease,
                            what: str) -> Descriptor:
    """A docker save layer tar, stored; its descriptor. docker save writes plain tars, so the
    layers are Docker schema 2 `...rootfs.diff.tar` (gzip ones `...diff.tar.gzip`)."""
    head = await archive.head(member)
    if head.startswith(_COMPRESSED[0]):
        media_type = DOCKER_LAYER_GZIP
    elif head.startswith(_COMPRESSED):
        raise invalid(f"{what}: layer {_shown(member.name)!r} is compressed other than with gzip, which a "
                      "Docker schema 2 image cannot say")
    else:
        media_type = DOCKER_LAYER
    digest = await archive.store(member, content, lease, what)
    return Descriptor(media_type, digest, member.size)


def docker_manifest(config_data: bytes, layers: Sequence[Descriptor]) -> tuple[Descriptor, bytes, Descriptor]:
    """The Docker schema 2 manifest of a docker save image (as containerd's importer makes
    it): its descriptor, its bytes, and the config's descriptor."""
    config = Descriptor(DOCKER_CONFIG, digest_of(config_data), len(config_data))
    data = json.dumps({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size} for layer in layers],
    }, separators=(",", ":")).encode()
    return Descriptor(DOCKER_MANIFEST, digest_of(data), len(data)), data, config


def layout_index(entry: Descriptor, name: str) -> dict[str, Any]:
    """index.json of an export: `entry`, annotated with the image's full name (containerd's
    annotation) and its tag (the OCI one, what `umoci --image DIR:TAG` and skopeo's
    `oci:DIR:TAG` look for), so an import names it as it was."""
    annotations = {**(entry.annotations or {}), IMAGE_NAME_ANNOTATION: name}
    tag = parse_reference(name).tag
    if tag is not None:
        annotations[REF_NAME_ANNOTATION] = tag
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        Descriptor(entry.media_type, entry.digest, entry.size, entry.platform, annotations, entry.urls).to_json()]}


# --- writing a layout -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    header: bytes
    data: bytes | None  # inline (oci-layout, index.json); None: the blob `digest`
    digest: str | None
    size: int


class LayoutTar:
    """An OCI image layout as a tar: `oci-layout`, `index.json` (`index`), then each of
    `blobs` ((digest, size), each once) as `blobs/<algorithm>/<hex>`."""

    def __init__(self, index: dict[str, Any], blobs: Sequence[tuple[str, int]]) -> None:
        layout_file = json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode()
        index_file = json.dumps(index, separators=(",", ":")).encode()
        entries = [
            _Entry(_header(OCI_LAYOUT_FILE, len(layout_file)), layout_file, None, len(layout_file)),
            _Entry(_header(OCI_INDEX_FILE, len(index_file)), index_file, None, len(index_file)),
            _Entry(_header("blobs/", 0, tarfile.DIRTYPE), None, None, 0),
        ]
        seen: set[str] = set()
        algorithms: set[str] = set()
        for digest, size in blobs:
            if digest in seen:
                continue
            seen.add(digest)
            algorithm, _, encoded = validate_digest(digest).partition(":")
            if algorithm not in algorithms:
                algorithms.add(algorithm)
                entries.append(_Entry(_header(f"blobs/{algorithm}/", 0, tarfile.DIRTYPE), None, None, 0))
            entries.append(_Entry(_header(f"blobs/{algorithm}/{encoded}", size), None, digest, size))
        self._entries = entries
        self.digests = tuple(sorted(seen))
        # Each entry: its header(s), its data padded to a block; then two zero blocks.
        self.size = sum(len(e.header) + _padded(e.size) for e in entries) + 2 * tarfile.BLOCKSIZE

    async def chunks(self, content: ContentStore) -> AsyncGenerator[bytes, None]:
        """The tar, a header or a chunk of a blob at a time. A blob gone or of another size
        than announced ends the stream with an error (the response is cut short)."""
        for entry in self._entries:
            yield entry.header
            if entry.data is not None:
                yield entry.data
            elif entry.digest is not None:
                sent = 0
                blob = await content.stream(entry.digest)
                async with aclosing(blob):
                    async for chunk in blob:
                        sent += len(chunk)
                        yield chunk
                if sent != entry.size:
                    raise CargoholdError(ErrorKind.CONFLICT, f"content {entry.digest} is {sent} bytes, not "
                                         f"{entry.size}; the export was cut short")
            if entry.size % tarfile.BLOCKSIZE:
                yield bytes(tarfile.BLOCKSIZE - entry.size % tarfile.BLOCKSIZE)
        yield bytes(2 * tarfile.BLOCKSIZE)


async def exported(layout: LayoutTar, content: ContentStore, leases: Leases) -> AsyncGenerator[bytes, None]:
    """`layout.chunks()`, its blobs held in a lease of their own while they are sent (the
    image may be deleted, and a collection run, meanwhile). The lease is taken when the first
    chunk is asked for, so a response never started holds nothing."""
    async with leases.lease("export") as lease:
        await lease.hold_content(*layout.digests)
        async with aclosing(layout.chunks(content)) as chunks:
            async for chunk in chunks:
                yield chunk


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 0
    # PAX: a sha512 blob's name is longer than ustar's 100 bytes.
    return info.tobuf(tarfile.PAX_FORMAT)


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
