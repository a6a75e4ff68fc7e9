"""A followed log under a task printing 10 MiB without a newline: the line arrives in
bounded parts marked partial, and the daemon's memory does not grow by the size; the
follow counts against the client's streams. Real runc + conmon."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.conftest import running_server, uds_client, wait_for
from tests.runtime.conftest import delete_all_tasks, import_busybox
from tests.runtime.tasks import run, vm_rss_kib, wait_exit

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]

TEN_MIB = 10 * 1024 * 1024
# Waits for the follow to be open (the file "go" appears), then one line of 10 MiB.
PRINT_ONE_HUGE_LINE = [
    "sh", "-c",
    f"while [ ! -e /tmp/go ]; do sleep 0.05; done; head -c {TEN_MIB} /dev/zero | tr '\\0' x; echo; echo done",
]


def reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, the peak RSS, to the current RSS.
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_kib() -> int:
    """VmHWM: the highest RSS since the last reset (this process runs the daemon)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.fixture
async def capped(runtime_settings: Settings, busybox_tar: Path, ns_headers: dict[str, str]) -> AsyncIterator[
    tuple[httpx.AsyncClient, Settings]
]:
    settings = replace(runtime_settings, max_streams_per_client=1)
    async with running_server(settings), uds_client(settings, timeout=60) as client:
        try:
            await import_busybox(client, busybox_tar, ns_headers)
            yield client, settings
        finally:
            await delete_all_tasks(client)


async def test_a_followed_endless_line_comes_in_bounded_parts(
    capped: tuple[httpx.AsyncClient, Settings], namespace: str, ns_headers: dict[str, str]
) -> None:
    client, settings = capped
    bound = settings.log_line_max_bytes
    await run(client, ns_headers, "huge", PRINT_ONE_HUGE_LINE)
    lines: list[dict[str, Any]] = []
    before = vm_rss_kib()
    reset_peak_rss()
    async with client.stream(
        "GET", "/tasks/huge/logs", params={"follow": "true"}, headers=ns_headers
    ) as response:
        assert response.status_code == 200
        # The follow holds this client's only stream: an event stream is refused meanwhile.
        refused = await client.get("/events")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        # Let the task print, now that the follow is reading.
        exec_go = await client.post(
            "/tasks/huge/processes",
            json={"exec_id": "go", "process": {"args": ["touch", "/tmp/go"]}},
            headers=ns_headers,
        )
        assert exec_go.status_code == 201, exec_go.text
        assert (await client.post("/tasks/huge/processes/go/start", headers=ns_headers)).status_code == 200
        async with asyncio.timeout(120):
            async for raw in response.aiter_lines():
                if not raw:
                    continue
                line = json.loads(raw)
                # Kept without its text: this process's RSS is the daemon's too.
                lines.append({**line, "line": len(line["line"].encode()), "x": set(line["line"]) <= {"x"}})
                if line["line"] == "done":
                    lines[-1]["line"] = "done"
                    break
    peak = peak_rss_kib()
    await wait_exit(client, ns_headers, "huge")

    texts = [line["line"] for line in lines if line["stream"] == "stdout"]
    assert texts[-1] == "done"
    parts = lines[:-1]
    assert all(line["line"] <= bound and line["x"] for line in parts)
    assert [line["partial"] for line in parts] == [True] * (len(parts) - 1) + [False]
    assert sum(line["line"] for line in parts) == TEN_MIB
    assert len(parts) >= TEN_MIB // bound
    grown = (peak - before) * 1024
    assert grown < TEN_MIB // 2, f"the daemon's RSS grew by {grown} bytes while a 10 MiB line was followed"
    # The follow has ended: its stream is released.

    async def a_stream_is_free() -> bool:
        async with client.stream("GET", "/events") as events:
            return events.status_code == 200

    await wait_for(a_stream_is_free, "the follow's stream is released", 5)
