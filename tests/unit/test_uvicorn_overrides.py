"""The uvicorn internals `cargohold serve` overrides (app/cli.py `_Server`), checked
against the uvicorn installed: the methods are still there with the shapes overridden,
uvicorn's `serve` still goes through them, and what they give still holds (a tick a
second, a stop at once, the app told, no signal handlers taken or signals re-raised).
uvicorn has no setting for any of it; this fails the day it changes under them."""

from __future__ import annotations

import asyncio
import inspect
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import httpx
import pytest
import uvicorn
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.cli import _Server
from tests.conftest import wait_for


def test_the_overridden_server_methods_are_still_there() -> None:
    expected = {
        "serve": ["self", "sockets"],
        "main_loop": ["self"],
        "on_tick": ["self", "counter"],
        "capture_signals": ["self"],
    }
    for name, parameters in expected.items():
        method = getattr(uvicorn.Server, name, None)
        assert method is not None, f"uvicorn.Server has no {name} any more"
        assert list(inspect.signature(method).parameters) == parameters, name
    # sse-starlette replaces Server.handle_exit at import with a pass-through of its own
    # (*args, **kwargs) that calls uvicorn's: uvicorn's is read from its source.
    assert "def handle_exit(self, sig: int, frame: FrameType | None) -> None:" in inspect.getsource(uvicorn.server)
    assert inspect.iscoroutinefunction(uvicorn.Server.main_loop)
    assert inspect.iscoroutinefunction(uvicorn.Server.on_tick)
    assert inspect.signature(uvicorn.Server.on_tick).return_annotation in (bool, "bool")
    # Where uvicorn calls them: signals captured around serving, the main loop between
    # startup and shutdown.
    assert "self.capture_signals()" in inspect.getsource(uvicorn.Server.serve)
    assert "await self.main_loop()" in inspect.getsource(uvicorn.Server._serve)
    # The state `serve` shares between the listeners' servers (one count of connections).
    state = uvicorn.Server(uvicorn.Config(Starlette())).server_state
    assert {"connections", "tasks", "default_headers", "total_requests"} <= vars(state).keys()


class _CountingServer(_Server):
    ticks = 0

    async def on_tick(self, counter: int) -> bool:
        self.ticks += 1
        return await super().on_tick(counter)


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.mark.anyio
async def test_a_tick_a_second_a_stop_at_once_and_the_signals_left_alone(tmp_path: Path) -> None:
    # uvicorn takes signals only in the main thread: elsewhere this test would prove nothing.
    assert threading.current_thread() is threading.main_thread()
    app = Starlette(routes=[Route("/", _ok)])
    told: list[bool] = []
    app.state.stop_waiting = lambda: told.append(True)
    sock = tmp_path / "server.sock"
    server = _CountingServer(uvicorn.Config(app, uds=str(sock), lifespan="off", log_level="warning"), app)
    terms: list[int] = []

    def record(number: int, frame: FrameType | None) -> None:
        terms.append(number)

    previous = signal.signal(signal.SIGTERM, record)
    try:
        handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        serving = asyncio.create_task(server.serve(), name="test.uvicorn")
        await wait_for(lambda: server.started or serving.done(), "the server started")
        started = time.monotonic()
        # uvicorn's capture_signals would have put its handle_exit in their place.
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport, base_url="http://cargohold") as client:
            response = await client.get("/")
        assert response.text == "ok"
        assert "date" in response.headers  # the first tick set the default headers
        await wait_for(lambda: server.ticks >= 3, "three ticks")
        # The 1st tick comes at once, the 3rd two seconds later (uvicorn's own: 0.2 s).
        assert time.monotonic() - started >= 1.5, f"{server.ticks} ticks in {time.monotonic() - started:.2f} s"
        asked = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)
        await asyncio.wait_for(serving, 5)
        # Woken at once, not at the next tick (uvicorn's shutdown itself pauses 0.1 s).
        assert time.monotonic() - asked < 0.8
        assert told == [True]  # the app heard of the stop (long-polls answer then)
        assert terms == []  # uvicorn re-raises a signal it handled; `serve` owns them here
    finally:
        signal.signal(signal.SIGTERM, previous)
        # sse-starlette's handle_exit (which ours calls) tells every SSE stream of the
        # process to end: the other tests of this process still stream.
        AppStatus.should_exit = False
