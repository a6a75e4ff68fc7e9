"""Routes for /content: the blobs of the content store, read only. HTTP shape only: the
range arithmetic is in `ranges.py`, the reading in ContentService.

The content store is global to the daemon, not per namespace (no Cargohold-Namespace header):
blobs are shared by the images of every namespace and named by digest.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.responses import StreamingResponse

from ..content import Info
from ..models import ContentInfo, ContentList
from .deps import Content, PageQuery, link_next_page
from .problems import problem_response, problems
from .ranges import ByteRange, parse_ranges

router = APIRouter(prefix="/content", tags=["content"])

BLOB_MEDIA_TYPE = "application/octet-stream"
GLOBAL = ("The content store is global to the daemon, not per namespace: every blob pulled or imported "
          "into any namespace is here, named by its digest.")

Digest = Annotated[str, Path(description="the blob's digest, sha256:<64 hex> or sha512:<128 hex>",
                             examples=["sha256:" + "0" * 64])]
RangeHeader = Annotated[str | None, Header(
    alias="Range", description="`bytes=first-last`, `bytes=first-`, `bytes=-suffix`, or several of them "
    "comma-separated (at most 16; they are coalesced). Another unit or a malformed value is ignored: "
    "the whole blob is sent.")]
IfRangeHeader = Annotated[str | None, Header(
    alias="If-Range", description="the blob's ETag: honour Range only if it still matches (it always does: "
    "a blob never changes)")]
IfNoneMatchHeader = Annotated[str | None, Header(alias="If-None-Match", description="an ETag: 304 if it matches")]

_BLOB_HEADERS = {
    "ETag": {"description": "the digest, quoted", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "`bytes`", "schema": {"type": "string"}},
    "Content-Length": {"description": "bytes in the body", "schema": {"type": "integer"}},
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_BLOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the whole blob", "content": {BLOB_MEDIA_TYPE: _BINARY}, "headers": _BLOB_HEADERS},
    206: {"description": "the range asked for; several ranges as `multipart/byteranges`",
          "content": {BLOB_MEDIA_TYPE: _BINARY, "multipart/byteranges": _BINARY},
          "headers": {**_BLOB_HEADERS, "Content-Range": {"description": "`bytes first-last/size` (one range)",
                                                         "schema": {"type": "string"}}}},
    304: {"description": "If-None-Match matched: the caller has this blob"},
    **problems(400, 404, 416),
}
_RANGE_DOC = ("`Range` is honoured (RFC 9110): one satisfiable range answers 206 with `Content-Range`, several "
              "answer 206 `multipart/byteranges` (overlapping ones coalesced), none satisfiable answers 416 with "
              "`Content-Range: bytes */size`; a malformed Range, another unit or more than 16 ranges is "
              "ignored (200, the whole blob). The ETag is the digest. 400: the digest does not parse; 404: no "
              "such blob.")


def _etag(digest: str) -> str:
    return f'"{digest}"'


def _matches(header: str | None, etag: str) -> bool:
    """If-None-Match: `*` or a list of (weak or strong) ETags; compared weakly (RFC 9110 13.1.2)."""
    if header is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


def _info(info: Info) -> ContentInfo:
    return ContentInfo(digest=info.digest, size=info.size, created_at=info.created_at)


@router.get("", summary="List blobs", description=f"A page at a time, by digest. {GLOBAL}",
            responses=problems(400, 422))
async def list_content(content: Content, page: PageQuery, request: Request, response: Response) -> ContentList:
    found = await content.list(page)
    link_next_page(request, response, found.next_cursor)
    return ContentList(blobs=[_info(info) for info in found.items], next_cursor=found.next_cursor)


@router.get("/{digest}/info", summary="Get a blob's digest, size and time", description=GLOBAL,
            responses=problems(400, 404))
async def get_content_info(digest: Digest, content: Content) -> ContentInfo:
    return _info(await content.info(digest))


class _Plan:
    """What a GET or HEAD of a blob answers: status, headers, and the ranges of the body."""

    def __init__(self, info: Info, range_header: str | None, if_range: str | None,
                 if_none_match: str | None) -> None:
        etag = _etag(info.digest)
        self.headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        self.ranges: list[ByteRange] = [ByteRange(0, info.size)]
        self.status = 200
        self.media_type = BLOB_MEDIA_TYPE
        self.boundary = ""
        self.parts: list[bytes] = []  # multipart: the head of each part
        if _matches(if_none_match, etag):
            self.status = 304
            self.ranges = []
            return
        # If-Range with another validator (an old ETag, a date): send the whole blob (RFC 9110 13.1.5).
        ranges = parse_ranges(range_header, info.size) if if_range is None or if_range == etag else None
        if ranges is None:
            self.headers["Content-Length"] = str(info.size)
            return
        if not ranges:
            self.status = 416
            return
        self.status = 206
        self.ranges = ranges
        if len(ranges) == 1:
            self.headers["Content-Range"] = ranges[0].content_range(info.size)
            self.headers["Content-Length"] = str(ranges[0].length)
            return
        self.boundary = secrets.token_hex(16)
        self.media_type = f"multipart/byteranges; boundary={self.boundary}"
        self.parts = [(f"--{self.boundary}\r\nContent-Type: {BLOB_MEDIA_TYPE}\r\n"
                       f"Content-Range: {r.content_range(info.size)}\r\n\r\n").encode() for r in ranges]
        length = sum(len(head) + r.length + 2 for head, r in zip(self.parts, ranges, strict=True))
        self.headers["Content-Length"] = str(length + len(self._end))

    @property
    def _end(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    def body(self, streams: list[AsyncGenerator[bytes, None]]) -> AsyncIterator[bytes]:
        """The body from one open stream per range (closed here, however the sending ends)."""

        async def chunks() -> AsyncIterator[bytes]:
            try:
                for i, stream in enumerate(streams):
                    if self.parts:
                        yield self.parts[i]
                    async with aclosing(stream):
                        async for chunk in stream:
                            yield chunk
                    if self.parts:
                        yield b"\r\n"
                if self.parts:
                    yield self._end
            finally:
                for stream in streams:
                    await stream.aclose()

        return chunks()


async def _plan(content: Content, digest: str, range_header: str | None, if_range: str | None,
                if_none_match: str | None) -> tuple[_Plan, Info]:
    info = await content.info(digest)
    return _Plan(info, range_header, if_range, if_none_match), info


def _unsatisfiable(info: Info, plan: _Plan) -> Response:
    return problem_response(416, f"no range of the Range header is inside content {info.digest} of {info.size} "
                            "bytes",
                            headers={**plan.headers, "Content-Range": f"bytes */{info.size}"})


@router.get("/{digest}", summary="Read a blob", description=f"The blob's bytes, streamed. {_RANGE_DOC} `HEAD` "
            f"answers the headers `GET` would send (status, length, ETag, Content-Range), without the body. {GLOBAL}",
            response_class=StreamingResponse, responses=_BLOB_RESPONSES)
async def get_content(digest: Digest, content: Content, range_header: RangeHeader = None,
                      if_range: IfRangeHeader = None, if_none_match: IfNoneMatchHeader = None) -> Response:
    plan, info = await _plan(content, digest, range_header, if_range, if_none_match)
    if plan.status == 416:
        return _unsatisfiable(info, plan)
    if plan.status == 304:
        return Response(status_code=304, headers=plan.headers)
    # Every range's file is opened before the answer starts: a blob removed meanwhile is still
    # sent whole, and a missing one is a 404, not a cut body.
    streams: list[AsyncGenerator[bytes, None]] = []
    try:
        for byte_range in plan.ranges:
            streams.append(await content.read(digest, byte_range.start, byte_range.length))
    except BaseException:
        for stream in streams:
            await stream.aclose()
        raise
    return StreamingResponse(plan.body(streams), plan.status, headers=plan.headers, media_type=plan.media_type)


# Left out of the description: an operation per HTTP method would need a body schema for an
# answer that has none; GET's description says what HEAD does.
@router.head("/{digest}", summary="Check a blob", include_in_schema=False)
async def head_content(digest: Digest, content: Content, range_header: RangeHeader = None,
                       if_range: IfRangeHeader = None, if_none_match: IfNoneMatchHeader = None) -> Response:
    plan, info = await _plan(content, digest, range_header, if_range, if_none_match)
    if plan.status == 416:
        return _unsatisfiable(info, plan)
    # The headers GET would send (Content-Length of the body GET would send), no body.
    return Response(status_code=plan.status, headers=plan.headers, media_type=plan.media_type)
