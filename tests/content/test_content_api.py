"""The /content routes over a real content store: list a page at a time, info, the bytes
(whole, ranges as RFC 9110 says, conditional), HEAD, and the 400/404/416 answers."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.content import ContentStore
from app.content.digests import digest_of
from tests.conftest import in_process_client, uds_client

pytestmark = pytest.mark.anyio

# Printable, so the multipart parser of the tests keeps it byte for byte.
DATA = b"".join(bytes([65 + i % 26]) for i in range(1000))
ABSENT = "sha256:" + "0" * 64
BAD_DIGESTS = ["sha256:xyz", "md5:" + "0" * 32, "nocolon", "sha256:" + "A" * 64]


def store(settings: Settings) -> ContentStore:
    return ContentStore(settings.root / "content")


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process_client(settings) as client:
        yield client


@pytest.fixture
async def blob(settings: Settings, api: httpx.AsyncClient) -> str:
    return await store(settings).put(DATA)


def assert_problem(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert text in response.json()["detail"]


class TestListContent:
    async def test_empty(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/content")
        assert response.status_code == 200, response.text
        assert response.json() == {"blobs": [], "next_cursor": None}

    async def test_pages_follow_the_digests_and_each_blob_comes_once(self, api: httpx.AsyncClient,
                                                                     settings: Settings) -> None:
        contents = [f"blob {i}".encode() * (i + 1) for i in range(5)]
        digests = [await store(settings).put(data) for data in contents]
        seen: list[dict[str, object]] = []
        url = "/content?limit=2"
        pages = 0
        while True:
            response = await api.get(url, headers={"Cargohold-Namespace": f"ns{pages}"})  # any: it is global
            assert response.status_code == 200, response.text
            body = response.json()
            assert len(body["blobs"]) <= 2
            seen += body["blobs"]
            pages += 1
            if body["next_cursor"] is None:
                assert "Link" not in response.headers
                break
            # The Link header is the way on: this list after the cursor.
            link = response.headers["Link"]
            assert link.startswith("</content?") and link.endswith('>; rel="next"')
            url = link[1:link.index(">")]
            assert dict(httpx.URL(url).params) == {"limit": "2", "after": body["next_cursor"]}
        assert pages == 3
        assert [b["digest"] for b in seen] == sorted(digests)
        sizes = {digest_of(data): len(data) for data in contents}
        assert {b["digest"]: b["size"] for b in seen} == sizes
        assert all(isinstance(b["created_at"], str) for b in seen)

    async def test_a_bad_limit_is_422(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/content?limit=0")
        assert response.status_code == 422, response.text


class TestContentInfo:
    async def test_info(self, api: httpx.AsyncClient, blob: str) -> None:
        response = await api.get(f"/content/{blob}/info")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["digest"] == blob == digest_of(DATA)
        assert body["size"] == len(DATA)
        assert body["created_at"]

    @pytest.mark.parametrize("digest", BAD_DIGESTS)
    async def test_a_digest_that_does_not_parse_is_400(self, api: httpx.AsyncClient, digest: str) -> None:
        assert_problem(await api.get(f"/content/{digest}/info"), 400, "digest")

    async def test_absent_is_404(self, api: httpx.AsyncClient) -> None:
        assert_problem(await api.get(f"/content/{ABSENT}/info"), 404, f"content {ABSENT} not found")


class TestGetContent:
    async def test_whole_blob(self, api: httpx.AsyncClient, blob: str) -> None:
        response = await api.get(f"/content/{blob}")
        assert response.status_code == 200, response.text
        assert response.content == DATA
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-length"] == str(len(DATA))
        assert response.headers["etag"] == f'"{blob}"'
        assert response.headers["accept-ranges"] == "bytes"

    @pytest.mark.parametrize(("header", "start", "end"), [
        pytest.param("bytes=0-9", 0, 10, id="first-bytes"),
        pytest.param("bytes=-7", 993, 1000, id="suffix"),
        pytest.param("bytes=-5000", 0, 1000, id="suffix-longer-than-the-blob"),
        pytest.param("bytes=990-", 990, 1000, id="open"),
        pytest.param("bytes=500-99999", 500, 1000, id="past-the-end-clipped"),
        pytest.param("bytes=999-999", 999, 1000, id="last-byte"),
        pytest.param("bytes=0-4, 3-9", 0, 10, id="overlapping-coalesced"),
        pytest.param("bytes=10-19,0-9", 0, 20, id="adjacent-coalesced"),
        pytest.param("bytes=2000-,100-109", 100, 110, id="one-unsatisfiable-one-not"),
        pytest.param("BYTES = 0-0", 0, 1, id="unit-case-and-spaces"),
        pytest.param("bytes=0-" + "9" * 5000, 0, 1000, id="a-last-pos-of-5000-digits"),
    ])
    async def test_one_range_is_206(self, api: httpx.AsyncClient, blob: str, header: str, start: int,
                                    end: int) -> None:
        response = await api.get(f"/content/{blob}", headers={"Range": header})
        assert response.status_code == 206, response.text
        assert response.content == DATA[start:end]
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
        assert response.headers["content-length"] == str(end - start)
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["etag"] == f'"{blob}"'

    async def test_several_ranges_are_multipart_byteranges(self, api: httpx.AsyncClient, blob: str) -> None:
        response = await api.get(f"/content/{blob}", headers={"Range": "bytes=0-1,10-14,-3"})
        assert response.status_code == 206, response.text
        content_type = response.headers["content-type"]
        assert content_type.startswith("multipart/byteranges; boundary=")
        assert "content-range" not in response.headers
        assert response.headers["content-length"] == str(len(response.content))
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + response.content)
        parts = [(part["Content-Range"], part.get_content_type(), part.get_payload(decode=True))
                 for part in message.iter_parts()]
        assert parts == [
            ("bytes 0-1/1000", "application/octet-stream", DATA[0:2]),
            ("bytes 10-14/1000", "application/octet-stream", DATA[10:15]),
            ("bytes 997-999/1000", "application/octet-stream", DATA[997:]),
        ]

    @pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=1000-,2000-",
                                        "bytes=" + "9" * 5000 + "-"])
    async def test_unsatisfiable_is_416_with_the_size(self, api: httpx.AsyncClient, blob: str, header: str) -> None:
        response = await api.get(f"/content/{blob}", headers={"Range": header})
        assert_problem(response, 416, "no range of the Range header is inside")
        assert response.headers["content-range"] == f"bytes */{len(DATA)}"

    @pytest.mark.parametrize("header", [
        pytest.param("bytes=5-1", id="last-before-first"),
        pytest.param("bytes=abc", id="not-numbers"),
        pytest.param("bytes=1-2-3", id="two-dashes"),
        pytest.param("bytes=+1-2", id="a-sign"),
        pytest.param("bytes=", id="no-range"),
        pytest.param("items=0-1", id="another-unit"),
        pytest.param("0-1", id="no-unit"),
        pytest.param("bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(17)), id="too-many"),
    ])
    async def test_a_range_that_cannot_be_honoured_is_ignored(self, api: httpx.AsyncClient, blob: str,
                                                              header: str) -> None:
        # RFC 9110 14.2: a server may ignore a Range it does not understand or will not honour.
        response = await api.get(f"/content/{blob}", headers={"Range": header})
        assert response.status_code == 200, response.text
        assert response.content == DATA
        assert "content-range" not in response.headers

    async def test_if_range(self, api: httpx.AsyncClient, blob: str) -> None:
        matching = await api.get(f"/content/{blob}", headers={"Range": "bytes=0-1", "If-Range": f'"{blob}"'})
        assert matching.status_code == 206 and matching.content == DATA[:2]
        other = await api.get(f"/content/{blob}", headers={"Range": "bytes=0-1", "If-Range": f'"{ABSENT}"'})
        assert other.status_code == 200 and other.content == DATA

    async def test_if_none_match_is_304(self, api: httpx.AsyncClient, blob: str) -> None:
        for tag in (f'"{blob}"', f'W/"{blob}"', f'"{ABSENT}", "{blob}"', "*"):
            response = await api.get(f"/content/{blob}", headers={"If-None-Match": tag})
            assert response.status_code == 304, tag
            assert response.content == b""
            assert response.headers["etag"] == f'"{blob}"'
        response = await api.get(f"/content/{blob}", headers={"If-None-Match": f'"{ABSENT}"'})
        assert response.status_code == 200 and response.content == DATA

    @pytest.mark.parametrize("digest", BAD_DIGESTS)
    async def test_a_digest_that_does_not_parse_is_400(self, api: httpx.AsyncClient, digest: str) -> None:
        assert_problem(await api.get(f"/content/{digest}"), 400, "digest")
        assert (await api.head(f"/content/{digest}")).status_code == 400

    async def test_absent_is_404(self, api: httpx.AsyncClient) -> None:
        assert_problem(await api.get(f"/content/{ABSENT}"), 404, f"content {ABSENT} not found")
        assert_problem(await api.get(f"/content/{ABSENT}", headers={"Range": "bytes=0-1"}), 404, "not found")
        response = await api.head(f"/content/{ABSENT}")
        assert response.status_code == 404 and response.content == b""

    async def test_empty_blob(self, api: httpx.AsyncClient, settings: Settings) -> None:
        empty = await store(settings).put(b"")
        response = await api.get(f"/content/{empty}")
        assert response.status_code == 200 and response.content == b""
        assert response.headers["content-length"] == "0"
        # A suffix of nothing: the whole (empty) blob; any first-pos is past its end.
        assert (await api.get(f"/content/{empty}", headers={"Range": "bytes=-5"})).status_code == 200
        assert (await api.get(f"/content/{empty}", headers={"Range": "bytes=0-"})).status_code == 416


class TestHeadContent:
    async def test_head_sends_the_headers_of_get_and_no_body(self, api: httpx.AsyncClient, blob: str) -> None:
        response = await api.head(f"/content/{blob}")
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["content-length"] == str(len(DATA))
        assert response.headers["etag"] == f'"{blob}"'
        assert response.headers["accept-ranges"] == "bytes"
        ranged = await api.head(f"/content/{blob}", headers={"Range": "bytes=-10"})
        assert ranged.status_code == 206 and ranged.content == b""
        assert ranged.headers["content-range"] == f"bytes 990-999/{len(DATA)}"
        assert ranged.headers["content-length"] == "10"
        assert (await api.head(f"/content/{blob}", headers={"Range": "bytes=5000-"})).status_code == 416


async def test_a_big_blob_streams_through_a_real_server(settings: Settings, uds_server: object,
                                                        tmp_path: Path) -> None:
    """64 MiB through uvicorn on a unix socket: sent in many chunks (streamed, never one body in
    memory), whole and verified; a range from its middle too."""
    source = tmp_path / "big"
    with open(source, "wb") as file:
        for _ in range(64):
            file.write(os.urandom(1024 * 1024))
    hashed = hashlib.sha256()
    content = store(settings)
    async with content.writer("big", total=source.stat().st_size) as writer:
        with open(source, "rb") as file:
            while chunk := file.read(4 * 1024 * 1024):
                hashed.update(chunk)
                await writer.write(chunk)
        digest = await writer.commit()
    assert digest == f"sha256:{hashed.hexdigest()}"
    async with uds_client(settings, timeout=60) as client:
        received = hashlib.sha256()
        chunks = total = 0
        async with client.stream("GET", f"/content/{digest}") as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(64 * 1024 * 1024)
            async for chunk in response.aiter_raw():
                received.update(chunk)
                chunks += 1
                total += len(chunk)
        assert total == 64 * 1024 * 1024 and f"sha256:{received.hexdigest()}" == digest
        assert chunks > 16
        middle = await client.get(f"/content/{digest}", headers={"Range": "bytes=33554432-33554441"})
        assert middle.status_code == 206
        with open(source, "rb") as file:
            file.seek(33554432)
            assert middle.content == file.read(10)
