"""The connection bounds of app/serving.py, against a real uvicorn on a unix socket with
the options `cargohold serve` uses: header timeout (slowloris), header size, concurrency."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings
from app.main import create_app
from app.serving import uvicorn_options
from tests.conftest import uds_client, wait_for

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def production_server(settings: Settings) -> AsyncIterator[str]:
    """uvicorn configured as `cargohold serve` configures it; yields the socket path."""
    sock = settings.state / "cargohold.sock"
    sock.parent.mkdir(parents=True, exist_ok=True)
    config = uvicorn.Config(
        create_app(settings), uds=str(sock), log_level="error", lifespan="on", **uvicorn_options(settings)
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or serving.done(), "uvicorn has started")
        if serving.done():
            serving.result()
        yield str(sock)
    finally:
        server.should_exit = True
        await serving


def _split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def _read_all(reader: asyncio.StreamReader, within: float) -> bytes:
    return await asyncio.wait_for(reader.read(), within)


async def test_a_slow_header_client_is_cut_off_while_others_are_served(settings: Settings) -> None:
    bounded = replace(settings, header_timeout=1.0)
    async with production_server(bounded) as sock, uds_client(bounded, timeout=5) as client:
        reader, writer = await asyncio.open_unix_connection(sock)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

        async def one_byte_a_second() -> None:
            for _ in range(30):
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.2)  # the slow client's pace: the behaviour under test

        trickle = asyncio.create_task(one_byte_a_second())
        try:
            # Meanwhile the daemon answers everyone else at once.
            for _ in range(5):
                before = time.monotonic()
                assert (await client.get("/healthz")).status_code == 200
                assert time.monotonic() - before < 0.5
            answer = await _read_all(reader, within=3)
        finally:
            trickle.cancel()
            writer.close()
        elapsed = time.monotonic() - started
        status, headers, body = _split(answer)
        assert status == 408
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        problem = json.loads(body)
        assert problem["status"] == 408 and "1 seconds" in problem["detail"]
        assert 0.9 <= elapsed < 2.5


async def test_a_connection_that_sends_nothing_is_closed(settings: Settings) -> None:
    bounded = replace(settings, header_timeout=0.5)
    async with production_server(bounded) as sock:
        reader, writer = await asyncio.open_unix_connection(sock)
        started = time.monotonic()
        assert await _read_all(reader, within=3) == b""  # closed, nothing to answer
        assert time.monotonic() - started < 2
        writer.close()


async def test_the_deadline_applies_to_each_request_of_a_kept_alive_connection(settings: Settings) -> None:
    bounded = replace(settings, header_timeout=0.5)
    async with production_server(bounded) as sock:
        reader, writer = await asyncio.open_unix_connection(sock)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b'"ok"}'), 3)
        assert first.startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.8)  # longer than the header timeout, within keep-alive: fine
        writer.write(b"GET /healthz HTTP/1.1\r\nHo")
        status, _, body = _split(await _read_all(reader, within=3))
        assert status == 408 and json.loads(body)["type"] == "urn:cargohold:problem:timeout"
        writer.close()


async def test_an_oversized_header_is_refused_with_431(settings: Settings) -> None:
    bounded = replace(settings, max_header_bytes=8 * 1024)
    async with production_server(bounded) as sock, uds_client(bounded) as client:
        answer = await asyncio.to_thread(_send_big_header, sock, 16 * 1024)
        status, headers, body = _split(answer)
        assert status == 431
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["detail"] == "request headers exceed 8192 bytes"
        # A request with ordinary headers is still fine.
        assert (await client.get("/healthz", headers={"X-Small": "a" * 1000})).status_code == 200


async def test_past_the_concurrency_cap_a_request_gets_a_problem_503(settings: Settings) -> None:
    bounded = replace(settings, max_concurrency=3)
    async with production_server(bounded) as sock:
        idle = [await asyncio.open_unix_connection(sock) for _ in range(3)]
        transport = httpx.AsyncHTTPTransport(uds=sock)
        async with httpx.AsyncClient(transport=transport, base_url="http://cargohold") as client:
            response = await client.get("/healthz")
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"] == "1"
            assert response.json()["type"] == "urn:cargohold:problem:unavailable"
            for _, writer in idle:
                writer.close()
                await writer.wait_closed()

            async def served() -> bool:  # once the server has seen the idle connections go
                return (await client.get("/healthz")).status_code == 200

            await wait_for(served, "a request is served again below the cap", 5)


async def test_unix_socket_callers_are_counted_by_uid(settings: Settings) -> None:
    capped = replace(settings, max_streams_per_client=1)
    async with production_server(capped), uds_client(capped, timeout=10) as client:
        async with client.stream("GET", "/events") as held:
            assert held.status_code == 200
            refused = await client.get("/events")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert f"(uid {os.getuid()} on the unix socket)" in refused.json()["detail"]


def _send_big_header(sock: str, size: int) -> bytes:
    """Send a head with one header of `size` bytes, then read the answer. (Sent whole and
    then read: on a unix socket, a peer closing with bytes unread makes recv fail with
    ECONNRESET, as a TCP RST would, and the answer would be lost.)"""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(3)
        conn.connect(sock)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def test_the_uvicorn_internals_hooked_are_still_there() -> None:
    """app/serving.py overrides these HttpToolsProtocol methods: if uvicorn renames or
    reshapes one, this fails before the bounds silently stop applying."""
    expected = {
        "connection_made": ["self", "transport"],
        "connection_lost": ["self", "exc"],
        "data_received": ["self", "data"],
        "on_message_begin": ["self"],
        "on_headers_complete": ["self"],
        "_start_asgi_task": ["self", "cycle", "app"],
    }
    for name, parameters in expected.items():
        method = getattr(HttpToolsProtocol, name, None)
        assert method is not None, f"uvicorn's HttpToolsProtocol has no {name} any more"
        assert list(inspect.signature(method).parameters) == parameters, name
    source = inspect.getsource(HttpToolsProtocol)
    # The state the hooks read, and where uvicorn starts a request's app.
    for needle in ("self.connections = ", "self.tasks = ", "self.loop = ", "self._start_asgi_task(self.cycle, app)"):
        assert needle in source, needle
