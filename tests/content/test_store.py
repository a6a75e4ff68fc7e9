"""ContentStore on a real filesystem in tmp_path: layout, modes, verification, ingests, ranges."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import pytest

from app.content import ContentStore, validate_digest
from app.content.store import MAX_REF_LENGTH
from app.errors import CargoholdError, ErrorKind

pytestmark = pytest.mark.anyio

DATA = b"hello, content store\n" * 1000
DIGEST = f"sha256:{hashlib.sha256(DATA).hexdigest()}"


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


async def write(store: ContentStore, data: bytes = DATA, ref: str = "ref-1", **expect: object) -> str:
    async with store.writer(ref, total=len(data), expected=DIGEST if data is DATA else None) as writer:
        for start in range(0, len(data), 4096):
            await writer.write(data[start:start + 4096])
        return await writer.commit(**expect)  # type: ignore[arg-type]


@pytest.mark.parametrize("digest", [
    pytest.param("sha256:" + "a" * 64, id="sha256"),
    pytest.param("sha512:" + "0" * 128, id="sha512"),
])
def test_valid_digests(digest: str) -> None:
    assert validate_digest(digest) == digest


@pytest.mark.parametrize(("digest", "says"), [
    pytest.param("a" * 64, "no algorithm", id="no-algorithm"),
    pytest.param("md5:" + "a" * 32, 'unsupported algorithm "md5"', id="md5"),
    pytest.param("sha256:" + "a" * 63, "exactly 64", id="short"),
    pytest.param("sha256:" + "A" * 64, "lowercase hex", id="uppercase"),
    pytest.param("sha256:" + "g" * 64, "hex", id="not-hex"),
    pytest.param("sha512:" + "a" * 64, "exactly 128", id="sha512-short"),
    pytest.param("sha256:../../etc/passwd", "exactly 64", id="traversal"),
    pytest.param("", "no algorithm", id="empty"),
])
async def test_invalid_digest_is_invalid_argument_everywhere(store: ContentStore, digest: str, says: str) -> None:
    for call in (store.info(digest), store.read(digest), store.delete(digest), store.exists(digest)):
        with pytest.raises(CargoholdError) as caught:
            await call
        assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
        assert says in caught.value.detail
    with pytest.raises(CargoholdError) as caught:
        async with store.writer("r", expected=digest):
            pass
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert files_under(store.root) == []


async def test_commit_publishes_a_verified_readonly_blob_and_removes_the_ingest(store: ContentStore) -> None:
    assert await write(store) == DIGEST
    path = store.root / "blobs" / "sha256" / DIGEST.split(":")[1]
    assert path.read_bytes() == DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    for directory in (store.root, store.root / "blobs", path.parent, store.root / "ingest"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert list((store.root / "ingest").iterdir()) == []
    info = await store.info(DIGEST)
    assert (info.digest, info.size) == (DIGEST, len(DATA))
    assert [i.digest for i in await store.walk()] == [DIGEST]
    assert await store.ingests() == []


async def test_directories_are_0700_whatever_the_umask(store: ContentStore) -> None:
    previous = os.umask(0)
    try:
        await write(store)
    finally:
        os.umask(previous)
    for directory in (store.root, store.root / "blobs", store.root / "blobs" / "sha256"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


async def test_ingest_data_is_0600_while_writing(store: ContentStore) -> None:
    async with store.writer("ref-1") as writer:
        await writer.write(b"x")
        [data] = (store.root / "ingest").glob("*/data")
        assert stat.S_IMODE(data.stat().st_mode) == 0o600


@pytest.mark.parametrize(("size", "digest", "says"), [
    pytest.param(len(DATA) + 1, None, f"got {len(DATA)} bytes, expected {len(DATA) + 1}", id="size"),
    pytest.param(None, "sha256:" + "0" * 64, "expected sha256:" + "0" * 64, id="digest"),
])
async def test_mismatch_leaves_no_blob_and_no_ingest(store: ContentStore, size: int | None, digest: str | None,
                                                     says: str) -> None:
    with pytest.raises(CargoholdError) as caught:
        async with store.writer("ref-1") as writer:
            await writer.write(DATA)
            await writer.commit(size, digest)
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert says in caught.value.detail and "nothing was stored" in caught.value.detail
    assert files_under(store.root) == []
    assert await store.walk() == [] and await store.ingests() == []


async def test_writing_past_the_expected_size_aborts(store: ContentStore) -> None:
    with pytest.raises(CargoholdError) as caught:
        async with store.writer("ref-1", total=10) as writer:
            await writer.write(b"0123456789")
            await writer.write(b"!")
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "more than the expected 10 bytes" in caught.value.detail
    assert files_under(store.root) == []


async def test_sha512_blobs(store: ContentStore) -> None:
    digest = f"sha512:{hashlib.sha512(DATA).hexdigest()}"
    async with store.writer("ref-512", expected=digest) as writer:
        await writer.write(DATA)
        assert await writer.commit() == digest
    assert (store.root / "blobs" / "sha512" / digest.split(":")[1]).read_bytes() == DATA
    assert await store.read(digest) == DATA


async def test_ingest_is_resumed_by_the_next_writer(store: ContentStore) -> None:
    async with store.writer("ref-1", total=len(DATA), expected=DIGEST) as writer:
        await writer.write(DATA[:5000])
    [status] = await store.ingests()
    assert (status.ref, status.offset, status.total, status.expected) == ("ref-1", 5000, len(DATA), DIGEST)
    async with store.writer("ref-1", total=len(DATA), expected=DIGEST) as writer:
        assert writer.offset == 5000
        await writer.write(DATA[5000:])
        assert await writer.commit() == DIGEST
    assert await store.read(DIGEST) == DATA
    assert await store.ingests() == []


async def test_ingest_with_other_expectations_starts_over(store: ContentStore) -> None:
    async with store.writer("ref-1", total=3) as writer:
        await writer.write(b"abc")
    async with store.writer("ref-1", total=len(DATA), expected=DIGEST) as writer:
        assert writer.offset == 0
        await writer.write(DATA)
        await writer.commit()
    assert await store.read(DIGEST) == DATA


async def test_abort_removes_the_ingest(store: ContentStore) -> None:
    async with store.writer("ref-1") as writer:
        await writer.write(b"partial")
    await store.abort("ref-1")
    assert await store.ingests() == []
    assert files_under(store.root) == []
    with pytest.raises(CargoholdError) as caught:
        await store.abort("ref-1")
    assert caught.value.kind is ErrorKind.NOT_FOUND


async def test_abort_while_writing_is_conflict(store: ContentStore) -> None:
    async with store.writer("ref-1") as writer:
        await writer.write(b"partial")
        with pytest.raises(CargoholdError) as caught:
            await store.abort("ref-1")
        assert caught.value.kind is ErrorKind.CONFLICT
    [status] = await store.ingests()
    assert status.offset == len(b"partial")


async def test_committed_expected_digest_is_already_exists(store: ContentStore) -> None:
    await write(store)
    with pytest.raises(CargoholdError) as caught:
        async with store.writer("other-ref", expected=DIGEST):
            pass
    assert caught.value.kind is ErrorKind.ALREADY_EXISTS
    assert await store.ingests() == []


async def test_same_digest_from_another_ref_is_already_exists_and_keeps_the_first(store: ContentStore) -> None:
    await write(store)
    with pytest.raises(CargoholdError) as caught:
        async with store.writer("other-ref") as writer:  # no expected digest: found at commit
            await writer.write(DATA)
            await writer.commit()
    assert caught.value.kind is ErrorKind.ALREADY_EXISTS
    assert await store.ingests() == []
    assert await store.read(DIGEST) == DATA


async def test_concurrent_writers_of_one_ref_write_once(store: ContentStore) -> None:
    """The second writer waits for the first, then finds the blob committed: one write in all."""
    writes: list[str] = []
    started = asyncio.Event()

    async def fetch(name: str) -> str:
        try:
            async with store.writer("layer-" + DIGEST, total=len(DATA), expected=DIGEST) as writer:
                writes.append(name)
                started.set()
                for start in range(0, len(DATA), 1000):
                    await writer.write(DATA[start:start + 1000])
                    await asyncio.sleep(0)
                await writer.commit()
                return "wrote"
        except CargoholdError as error:
            assert error.kind is ErrorKind.ALREADY_EXISTS
            return "found"

    first = asyncio.create_task(fetch("first"))
    await started.wait()
    results = await asyncio.gather(first, fetch("second"))
    assert sorted(results) == ["found", "wrote"]
    assert writes == ["first"]
    assert await store.read(DIGEST) == DATA


async def test_writer_without_wait_is_conflict_while_busy(store: ContentStore) -> None:
    async with store.writer("ref-1"):
        with pytest.raises(CargoholdError) as caught:
            async with store.writer("ref-1", wait=False):
                pass
        assert caught.value.kind is ErrorKind.CONFLICT


@pytest.mark.parametrize(("offset", "length", "expected"), [
    pytest.param(0, None, DATA, id="whole"),
    pytest.param(100, 50, DATA[100:150], id="middle"),
    pytest.param(len(DATA) - 10, 100, DATA[-10:], id="clipped-at-end"),
    pytest.param(len(DATA), None, b"", id="at-end"),
])
async def test_ranged_reads(store: ContentStore, offset: int, length: int | None, expected: bytes) -> None:
    await write(store)
    assert await store.read(DIGEST, offset, length) == expected
    chunks = [chunk async for chunk in await store.stream(DIGEST, offset, length, chunk_size=333)]
    assert b"".join(chunks) == expected
    assert all(len(chunk) <= 333 for chunk in chunks)


@pytest.mark.parametrize(("offset", "length"), [(-1, None), (len(DATA) + 1, None), (0, -5)])
async def test_range_outside_the_blob_is_invalid(store: ContentStore, offset: int, length: int | None) -> None:
    await write(store)
    with pytest.raises(CargoholdError) as caught:
        await store.read(DIGEST, offset, length)
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert f"of {len(DATA)} bytes" in caught.value.detail


async def test_missing_blob_is_not_found(store: ContentStore) -> None:
    missing = "sha256:" + "1" * 64
    for call in (store.info(missing), store.read(missing), store.delete(missing)):
        with pytest.raises(CargoholdError) as caught:
            await call
        assert caught.value.kind is ErrorKind.NOT_FOUND
        assert missing in caught.value.detail
    assert not await store.exists(missing)


async def test_delete_and_walk(store: ContentStore) -> None:
    other = b"other"
    other_digest = await store.put(other)
    await write(store)
    assert [i.digest for i in await store.walk()] == sorted([DIGEST, other_digest])
    await store.delete(DIGEST)
    assert [i.digest for i in await store.walk()] == [other_digest]
    assert not await store.exists(DIGEST)


async def test_walk_ignores_files_that_are_not_blobs(store: ContentStore) -> None:
    await write(store)
    blobs = store.root / "blobs" / "sha256"
    (blobs / "not-a-digest").write_bytes(b"x")
    (blobs / ("Z" * 64)).write_bytes(b"x")
    (store.root / "blobs" / "md5").mkdir()
    assert [i.digest for i in await store.walk()] == [DIGEST]


async def test_put_is_idempotent_and_verifies(store: ContentStore) -> None:
    assert await store.put(DATA, DIGEST) == DIGEST
    assert await store.put(DATA, DIGEST) == DIGEST
    assert await store.put(DATA) == DIGEST
    with pytest.raises(CargoholdError) as caught:
        await store.put(b"tampered", "sha256:" + "2" * 64)
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert [i.digest for i in await store.walk()] == [DIGEST]
    assert await store.ingests() == []


@pytest.mark.parametrize("ref", ["", "x" * (MAX_REF_LENGTH + 1), "bad\nref"])
async def test_bad_refs_are_invalid(store: ContentStore, ref: str) -> None:
    with pytest.raises(CargoholdError) as caught:
        async with store.writer(ref):
            pass
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert files_under(store.root) == []


async def test_refs_with_slashes_stay_inside_the_ingest_dir(store: ContentStore) -> None:
    async with store.writer("../../escape") as writer:
        await writer.write(b"x")
    [data] = (store.root / "ingest").glob("*/data")
    assert data.parent.parent == store.root / "ingest"
    assert [s.ref for s in await store.ingests()] == ["../../escape"]


async def test_commit_against_a_digest_of_another_algorithm_rehashes(store: ContentStore) -> None:
    digest = f"sha512:{hashlib.sha512(DATA).hexdigest()}"
    async with store.writer("ref-1") as writer:  # hashing sha256 as it goes
        await writer.write(DATA)
        assert await writer.commit(len(DATA), digest) == digest
    assert await store.read(digest) == DATA
