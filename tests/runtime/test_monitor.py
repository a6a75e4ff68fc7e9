"""The monitor on the real kernel: OOM kills reported at once and in order, cgroup figures
on /metrics and /tasks/{id}/metrics, live resource updates, the Monitor surviving
cgroups that vanish, and no file descriptor left behind by 100 task lifecycles.

Every daemon here polls every 0.2 s (`monitor_interval`), so a figure is never more
than a poll away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.monitor.cgroup_stats import CGROUP_ROOT, CgroupMode, CgroupStats, detect_mode
from app.monitor.monitor import Monitor
from tests.conftest import running_server, uds_client, wait_for
from tests.runtime.conftest import delete_all_tasks, import_busybox, make_container
from tests.runtime.tasks import monitor_polls, run_exec, run_task, wait_exec

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]

INTERVAL = 0.2
LIMIT = 32 * 1024 * 1024  # 33554432
MIB = 1024 * 1024
# Grows a shell variable by doubling it until the memory cgroup's limit OOM-kills the shell.
DOUBLING = "x=a; while true; do x=$x$x; done"
CONTAINER_FAMILIES = (
    "container_memory_usage_bytes", "container_memory_limit_bytes", "container_memory_rss_bytes",
    "container_memory_oom_total", "container_cpu_usage_seconds_total", "container_cpu_throttled_seconds_total",
    "container_pids_current", "container_blkio_bytes_total",
)


@pytest.fixture
def monitor_settings(runtime_settings: Settings) -> Settings:
    return replace(runtime_settings, monitor_interval=INTERVAL)


@pytest.fixture
async def client(monitor_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a real daemon (in this process, on a unix socket) polling every 0.2 s."""
    async with running_server(monitor_settings), uds_client(monitor_settings, timeout=60) as client:
        try:
            yield client
        finally:
            await drain(client)


# --- helpers ------------------------------------------------------------------------------


async def scrape(client: httpx.AsyncClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    """/metrics as {sample name: [(labels, value)]}."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def series(scraped: dict[str, list[tuple[dict[str, str], float]]], name: str, container_id: str) -> list[float]:
    return [value for labels, value in scraped.get(name, []) if labels.get("container_id") == container_id]


def one(scraped: dict[str, list[tuple[dict[str, str], float]]], name: str, container_id: str) -> float | None:
    values = series(scraped, name, container_id)
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


def families_of(scraped: dict[str, list[tuple[dict[str, str], float]]], container_id: str) -> set[str]:
    return {
        name for name, found in scraped.items()
        if any(labels.get("container_id") == container_id for labels, _ in found)
    }


async def task_gone(client: httpx.AsyncClient, headers: dict[str, str], task_id: str) -> bool:
    """Torn down and deleted: not even listed (GET /tasks/{id} is 404 earlier, as soon as
    the exit is recorded; see test_a_task_gone_from_get_can_be_created_again)."""
    listed = (await client.get("/tasks", headers=headers)).json()["tasks"]
    return task_id not in [task["id"] for task in listed]


async def drain(client: httpx.AsyncClient) -> None:
    """Delete every task until none is left."""
    for _ in range(3):
        await delete_all_tasks(client)
        try:
            await wait_for(lambda: _no_tasks(client), "every task is deleted", within=10)
            return
        except AssertionError:
            continue


async def _no_tasks(client: httpx.AsyncClient) -> bool:
    for namespace in (await client.get("/namespaces")).json()["namespaces"]:
        headers = {"Cargohold-Namespace": namespace["name"]}
        if (await client.get("/tasks", headers=headers)).json()["tasks"]:
            return False
    return True


class EventStream:
    """An SSE subscriber on the real socket, collecting envelopes in the background."""

    def __init__(self, settings: Settings, filters: list[str]) -> None:
        self.events: list[dict[str, Any]] = []
        self._settings = settings
        self._filters = filters
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStream:
        self._task = asyncio.create_task(self._read(), name="test.sse")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if self._task.done() and not self._task.cancelled() and self._task.exception() is not None:
            raise AssertionError("the event stream failed") from self._task.exception()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        async with uds_client(self._settings, timeout=None) as client, client.stream(
            "GET", "/events", params={"filter": self._filters}, headers={"Accept": "text/event-stream"}
        ) as response:
            assert response.status_code == 200
            data: list[str] = []
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data.append(line.removeprefix("data:").strip())
                elif line == "" and data:
                    self.events.append(json.loads("\n".join(data)))
                    data = []

    def topics(self) -> list[str]:
        return [event["topic"] for event in self.events]


async def subscribed(client: httpx.AsyncClient, count: int = 1) -> bool:
    scraped = await scrape(client)
    return [value for _, value in scraped["cargohold_sse_subscribers"]] == [float(count)]


def cgroup_dir(controller: str, namespace: str, task_id: str) -> Path:
    """Where runc put the task's cgroup for `controller` on this host."""
    base = CGROUP_ROOT if detect_mode() is CgroupMode.UNIFIED else CGROUP_ROOT / controller
    # Below the daemon's own parent, `/cargohold/<key>`; the namespace is this test's.
    found = sorted((base / "cargohold").glob(f"*/{namespace}/{task_id}"))
    return found[0] if found else base / "cargohold" / "none" / namespace / task_id


def kernel_blkio_bytes(namespace: str, task_id: str) -> dict[str, int]:
    """Bytes by op ("read", "write") in the task's cgroup's own block I/O file."""
    totals: dict[str, int] = {}
    if detect_mode() is CgroupMode.UNIFIED:
        for line in (cgroup_dir("io", namespace, task_id) / "io.stat").read_text().splitlines():
            for key, _, value in (pair.partition("=") for pair in line.split()[1:]):
                if key in ("rbytes", "wbytes"):
                    op = "read" if key == "rbytes" else "write"
                    totals[op] = totals.get(op, 0) + int(value)
        return totals
    for line in (cgroup_dir("blkio", namespace, task_id) / "blkio.throttle.io_service_bytes").read_text().splitlines():
        _device, *rest = line.split()
        if len(rest) == 2 and rest[0] in ("Read", "Write"):
            totals[rest[0].lower()] = totals.get(rest[0].lower(), 0) + int(rest[1])
    return totals


def eventfds() -> int:
    """Open eventfds of this process (the daemon runs in it)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]":
                count += 1
        except OSError:
            pass
    return count


def fd_kinds() -> dict[str, int]:
    kinds: dict[str, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":")[0] if ":" in target and not target.startswith("/") else "file"
        kinds[kind if kind != "anon_inode" else target] = kinds.get(kind if kind != "anon_inode" else target, 0) + 1
    return kinds


# --- OOM -------------------------------------------------------------------------------------


async def test_oom_kill_is_reported_before_the_exit(
    client: httpx.AsyncClient, monitor_settings: Settings, busybox_tar: Path, ns_headers: dict[str, str],
) -> None:
    """A shell doubling a variable under a 32 MiB limit: /tasks/oom with the figures, then
    /tasks/exit 137 with oom_killed; wait agrees; the task's series go with it."""
    await import_busybox(client, busybox_tar, ns_headers)
    await make_container(client, ns_headers, "oom", ["sh", "-c", DOUBLING],
                         linux={"resources": {"memory": {"limit": LIMIT}}})
    filters = ['topic~="^/tasks/(oom|exit)$",event.container_id==oom']
    async with EventStream(monitor_settings, filters) as stream:
        await wait_for(lambda: subscribed(client), "the event stream is subscribed", 15)
        await run_task(client, ns_headers, "oom")
        exit_ = (await client.post("/tasks/oom/wait", headers=ns_headers)).json()
        await wait_for(lambda: "/tasks/exit" in stream.topics(), "/tasks/exit is streamed", 15)

    assert exit_["exit_status"] == 137, exit_
    assert exit_["oom_killed"] is True, exit_
    topics = stream.topics()
    assert topics[-1] == "/tasks/exit" and topics.count("/tasks/exit") == 1, topics
    assert topics[:-1] and set(topics[:-1]) == {"/tasks/oom"}, f"/tasks/oom must come before /tasks/exit: {topics}"
    oom = stream.events[0]["event"]
    assert oom["container_id"] == "oom"
    assert oom["oom_kill_count"] >= 1
    assert oom["memory_limit_bytes"] == LIMIT
    assert LIMIT // 2 <= oom["memory_max_usage_bytes"] <= LIMIT, oom
    assert stream.events[0]["namespace"] == ns_headers["Cargohold-Namespace"]
    exit_event = stream.events[-1]["event"]
    assert (exit_event["exit_status"], exit_event["oom_killed"]) == (137, True)
    assert stream.events[0]["id"] < stream.events[-1]["id"]

    # Exit means delete: once it is gone, so are its series.
    await wait_for(lambda: task_gone(client, ns_headers, "oom"), "the task is gone", 15)
    assert families_of(await scrape(client), "oom") == set()
    # And `wait` after the fact still tells the truth.
    again = (await client.post("/tasks/oom/wait", headers=ns_headers)).json()
    assert (again["exit_status"], again["oom_killed"]) == (137, True)


async def test_oom_total_while_the_task_runs_and_gone_after_delete(
    client: httpx.AsyncClient, monitor_settings: Settings, busybox_tar: Path, ns_headers: dict[str, str],
) -> None:
    """A child shell is OOM-killed, the task's init survives: /tasks/oom is published while
    the task runs (not only once its exit is handled), container_memory_oom_total counts
    the kill, and every series of the task goes when it is deleted."""
    await import_busybox(client, busybox_tar, ns_headers)
    script = f"sh -c '{DOUBLING}'; echo child-killed; sleep 1000"
    await make_container(client, ns_headers, "survivor", ["sh", "-c", script],
                         linux={"resources": {"memory": {"limit": LIMIT}}})
    await make_container(client, ns_headers, "bystander", ["sleep", "1000"])
    async with EventStream(monitor_settings, ['topic=="/tasks/oom"']) as stream:
        await wait_for(lambda: subscribed(client), "the event stream is subscribed", 15)
        await run_task(client, ns_headers, "bystander")
        await run_task(client, ns_headers, "survivor")

        async def oom_total() -> float | None:
            return one(await scrape(client), "container_memory_oom_total", "survivor")

        # The poll sees the kill (the child dies within a second of the start) ...
        assert await wait_for(oom_total, "container_memory_oom_total has a value", 20) == 1.0
        # ... and /tasks/oom, sent "without waiting for the poll", is there by then: give it 1 s more.
        with suppress(AssertionError):
            await wait_for(lambda: stream.events, "/tasks/oom is streamed", within=1)
        while_running = list(stream.events)

        assert (await client.get("/tasks/survivor", headers=ns_headers)).json()["status"] == "running"
        figures = (await client.get("/tasks/survivor/metrics", headers=ns_headers)).json()
        assert figures["oom_kill_count"] == 1 and figures["memory_limit_bytes"] == LIMIT
        scraped = await scrape(client)
        assert one(scraped, "container_memory_limit_bytes", "survivor") == LIMIT
        assert one(scraped, "container_memory_oom_total", "bystander") == 0.0
        assert one(scraped, "container_memory_limit_bytes", "bystander") is None  # unlimited: no series
        assert set(CONTAINER_FAMILIES) - {"container_blkio_bytes_total"} <= families_of(scraped, "survivor")
        labels = next(
            labels for labels, _ in scraped["container_memory_oom_total"] if labels["container_id"] == "survivor"
        )
        assert labels == {"namespace": ns_headers["Cargohold-Namespace"], "container_id": "survivor"}

        deleted = await client.delete("/tasks/survivor", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["oom_killed"] is True  # an exit after an OOM kill carries it
        scraped = await scrape(client)
        assert families_of(scraped, "survivor") == set()
        # The other task's series stay.
        assert {"container_memory_usage_bytes", "container_memory_oom_total", "container_pids_current"} <= (
            families_of(scraped, "bystander")
        )
        await asyncio.sleep(0.5)  # only for the failure message below: /tasks/oom events that came late
        after_delete = list(stream.events)

    assert [(event["event"]["container_id"], event["event"]["oom_kill_count"]) for event in while_running] == [
        ("survivor", 1)
    ], (
        "the OOM kill of a task that keeps running was not published while it ran "
        f"(/tasks/oom events after its delete: {[event['event'] for event in after_delete]})"
    )


# --- figures ------------------------------------------------------------------------------------


async def test_memory_usage_rises_and_task_metrics(
    client: httpx.AsyncClient, busybox_tar: Path, ns_headers: dict[str, str],
) -> None:
    """A task that grows an 8 MiB shell variable then sleeps: container_memory_usage_bytes
    rises on /metrics; /tasks/{id}/metrics has read_at and the figures; polls are timed."""
    await import_busybox(client, busybox_tar, ns_headers)
    # The shell grows only once told (/dev/shm/go, made by an exec), so the baseline is read
    # before it: a fixed sleep let a loaded machine read it mid-growth. The final `echo`
    # keeps the shell (and its variable) alive: busybox would exec a last `sleep`.
    grow = ("while [ ! -e /dev/shm/go ]; do sleep 0.05; done; "
            "x=0123456789abcdef; i=0; while [ $i -lt 19 ]; do x=$x$x; i=$((i+1)); done; sleep 1000; echo ${#x}")
    await make_container(client, ns_headers, "grower", ["sh", "-c", grow])
    before = await scrape(client)
    polls_before = before["cargohold_monitor_poll_seconds_count"][0][1]
    await run_task(client, ns_headers, "grower")

    async def usage() -> float | None:
        return one(await scrape(client), "container_memory_usage_bytes", "grower")

    first = await wait_for(usage, "container_memory_usage_bytes has a value", 15)
    assert first < 4 * MIB, "the shell had not grown yet; the test needs a baseline"
    await run_exec(client, ns_headers, "grower", "go", ["touch", "/dev/shm/go"])
    assert (await wait_exec(client, ns_headers, "grower", "go"))["exit_status"] == 0
    grown = await wait_for(lambda: _at_least(usage, first + 6 * MIB), "the usage grows by 6 MiB", 15)
    assert grown >= first + 6 * MIB

    async def settled() -> dict[str, Any] | None:
        # Grown, and the shell has started its `sleep` (a poll between the two sees one pid).
        found: dict[str, Any] = (await client.get("/tasks/grower/metrics", headers=ns_headers)).json()
        return found if found["pids_current"] == 2 else None

    figures = await wait_for(settled, "the figures show the grown shell and its sleep", 15)
    read_at = datetime.fromisoformat(figures["read_at"])
    assert read_at.tzinfo is not None and abs((datetime.now(UTC) - read_at).total_seconds()) < 5
    assert figures["container_id"] == "grower" and figures["namespace"] == ns_headers["Cargohold-Namespace"]
    assert figures["memory_usage_bytes"] >= 8 * MIB
    assert figures["memory_rss_bytes"] >= 8 * MIB  # the variable is anonymous memory
    assert figures["memory_max_usage_bytes"] >= figures["memory_usage_bytes"] - MIB
    assert figures["memory_limit_bytes"] is None and figures["pids_limit"] is None  # no limits set
    assert figures["oom_kill_count"] == 0
    assert figures["cpu_usage_seconds"] > 0
    assert figures["pids_current"] == 2  # sh and its sleep
    # Block I/O as the kernel counts it for the task's cgroup (none done, and kernels count
    # only throttled I/O in v1's file: then it is {}), read here with no help from the app.
    assert figures["blkio_bytes"] == kernel_blkio_bytes(ns_headers["Cargohold-Namespace"], "grower")
    polls_then = await monitor_polls(client)
    await wait_for(lambda: _at_least(lambda: monitor_polls(client), polls_then + 2), "two more polls", 15)
    later = (await client.get("/tasks/grower/metrics", headers=ns_headers)).json()
    assert datetime.fromisoformat(later["read_at"]) > read_at, "figures are refreshed every poll"

    after = await scrape(client)
    polls = after["cargohold_monitor_poll_seconds_count"][0][1]
    assert polls >= polls_before + 3, (polls_before, polls)
    assert after["cargohold_monitor_poll_seconds_sum"][0][1] > 0
    buckets = after["cargohold_monitor_poll_seconds_bucket"]
    assert [value for labels, value in buckets if labels["le"] == "+Inf"] == [polls]
    # Every family but the limit (none set) and block I/O (none done) has the task's series.
    expected = set(CONTAINER_FAMILIES) - {"container_memory_limit_bytes", "container_blkio_bytes_total"}
    assert expected <= families_of(after, "grower")
    assert one(after, "container_memory_limit_bytes", "grower") is None
    assert one(after, "container_pids_current", "grower") == 2.0


async def _at_least(read: Callable[[], Any], floor: float) -> float | None:
    value = await read()
    return value if value is not None and value >= floor else None


async def test_live_update_shows_in_figures_and_cgroup_files(
    client: httpx.AsyncClient, busybox_tar: Path, ns_headers: dict[str, str], namespace: str,
) -> None:
    """PATCH a pids limit and a CPU quota onto a busy task: the cgroup files change, the
    figures show pids_limit and the throttling, the quota holds."""
    await import_busybox(client, busybox_tar, ns_headers)
    await make_container(client, ns_headers, "busy", ["sh", "-c", "while true; do :; done"])
    await run_task(client, ns_headers, "busy")
    patched = await client.patch(
        "/tasks/busy",
        json={"resources": {"pids": {"limit": 50}, "cpu": {"quota": 10000, "period": 100000}}},
        headers=ns_headers,
    )
    assert patched.status_code == 200, patched.text

    if detect_mode() is CgroupMode.UNIFIED:
        assert (cgroup_dir("cpu", namespace, "busy") / "cpu.max").read_text().split() == ["10000", "100000"]
    else:
        cpu = cgroup_dir("cpu", namespace, "busy")
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == 10000
        assert int((cpu / "cpu.cfs_period_us").read_text()) == 100000
    assert (cgroup_dir("pids", namespace, "busy") / "pids.max").read_text().strip() == "50"

    async def figures() -> dict[str, Any]:
        result: dict[str, Any] = (await client.get("/tasks/busy/metrics", headers=ns_headers)).json()
        return result

    async def throttled() -> dict[str, Any] | None:
        found = await figures()
        return found if found["pids_limit"] == 50 and (found["cpu_throttled_periods"] or 0) > 0 else None

    found = await wait_for(throttled, "the pids limit and throttling show in the figures", 15)
    assert found["cpu_throttled_seconds"] > 0
    # The quota holds: 10 ms per 100 ms is 0.1 CPU-second a second.
    start = (await figures())["cpu_usage_seconds"]
    await asyncio.sleep(1.5)  # the window the quota is measured over: the behaviour under test
    used = (await figures())["cpu_usage_seconds"] - start
    assert used < 0.3, f"{used:.3f} CPU-seconds in ~1.5 s under a 10% quota"
    scraped = await scrape(client)
    throttled_total = one(scraped, "container_cpu_throttled_seconds_total", "busy")
    assert throttled_total is not None and throttled_total > 0
    missing = await client.get("/tasks/nope/metrics", headers=ns_headers)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


# --- the Monitor on its own: vanishing cgroups ------------------------------------------------


async def test_monitor_survives_cgroups_that_vanish(caplog: pytest.LogCaptureFixture) -> None:
    """A cgroup that never existed and one removed between polls: the loop keeps polling,
    the other cgroup's figures keep coming, each gone cgroup is logged once, unwatch
    drops figures and eventfds."""
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    mode = detect_mode()
    base = CGROUP_ROOT if mode.uses_v2 else CGROUP_ROOT / "memory"
    parent = f"cargohold-test-{os.getpid()}"
    caplog.set_level(logging.INFO, logger="app.monitor.monitor")
    polls: list[float] = []
    ooms: list[tuple[str, str, CgroupStats]] = []

    async def on_oom(namespace: str, container_id: str, stats: CgroupStats) -> None:
        ooms.append((namespace, container_id, stats))

    fds_before = eventfds()
    (base / parent / "x").mkdir(parents=True)
    (base / parent / "y").mkdir()
    monitor = Monitor(mode, 0.05, observe_poll=polls.append)
    monitor.start()
    try:
        monitor.watch("t", "missing", f"/{parent}/missing", on_oom)
        monitor.watch("t", "x", f"/{parent}/x", on_oom)
        monitor.watch("t", "y", f"/{parent}/y", on_oom)
        if not mode.uses_v2:
            assert eventfds() == fds_before + 2, "one OOM eventfd per existing cgroup"
        await wait_for(lambda: monitor.latest("t", "x") and monitor.latest("t", "y"), "both cgroups are read", 5)
        assert monitor.latest("t", "missing") is None

        (base / parent / "x").rmdir()  # between two polls
        polls_at_rmdir = len(polls)
        y_before = monitor.latest("t", "y")
        assert y_before is not None
        await wait_for(lambda: len(polls) >= polls_at_rmdir + 10, "ten more polls", 5)

        y_after = monitor.latest("t", "y")
        assert y_after is not None and y_after.read_at > y_before.read_at, "the other cgroup kept updating"
        assert monitor._poller is not None and not monitor._poller.done(), "the poll loop died"
        gone = [record for record in caplog.records if "is gone" in record.getMessage()]
        assert sorted(record.getMessage() for record in gone) == [
            "cgroup of t/missing is gone; skipping it until it is unwatched",
            "cgroup of t/x is gone; skipping it until it is unwatched",
        ], "each vanished cgroup is logged once"
        assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
        assert ooms == [], "removing a cgroup signals its eventfd; that is no OOM kill"

        for key in ("missing", "x", "y"):
            monitor.unwatch("t", key)
        assert monitor.all_latest() == {}
        assert eventfds() == fds_before, "unwatch closes every OOM eventfd"
        polls_now = len(polls)
        await wait_for(lambda: len(polls) >= polls_now + 3, "three more polls", 5)
        assert monitor.all_latest() == {}
    finally:
        await monitor.close()
        for path in (base / parent / "x", base / parent / "y", base / parent):
            if path.exists():
                path.rmdir()
    assert eventfds() == fds_before


# --- no fd leak -----------------------------------------------------------------------------------

LIFECYCLES = 100
BATCH = 10
FD_SLACK = 2  # asyncio and the thread pool may keep a descriptor or two open from a busy moment


async def test_no_fd_leak_over_100_task_lifecycles(
    monitor_settings: Settings, busybox_tar: Path, ns_headers: dict[str, str],
) -> None:
    """The daemon runs in this process: its open fds before and after 100 create/start/
    wait lifecycles of `true` (10 at a time) are the same, within FD_SLACK; no eventfd
    (OOM watch) or pidfd (exit watch) is left at all."""
    # No keep-alive: client and server sockets of finished requests do not linger in the count.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with running_server(monitor_settings), uds_client(monitor_settings, timeout=60, limits=limits) as client:
        try:
            await import_busybox(client, busybox_tar, ns_headers)
            ids = [f"life{n}" for n in range(BATCH)]
            for task_id in ids:
                await make_container(client, ns_headers, task_id, ["true"])

            async def lifecycle(task_id: str) -> None:
                await run_task(client, ns_headers, task_id)
                exit_ = (await client.post(f"/tasks/{task_id}/wait", headers=ns_headers)).json()
                assert exit_["exit_status"] == 0, exit_
                await wait_for(lambda: task_gone(client, ns_headers, task_id), f"{task_id} is gone", 30)

            await batch(lifecycle, ids)  # warm-up
            # A quiet moment for the baseline; taken busier, it would only make the test lenient.
            await asyncio.sleep(0.5)
            fds_before, kinds_before, eventfds_before = len(os.listdir("/proc/self/fd")), fd_kinds(), eventfds()

            started = time.monotonic()
            for _ in range(LIFECYCLES // BATCH):
                await batch(lifecycle, ids)
            elapsed = time.monotonic() - started
            assert (await client.get("/tasks", headers=ns_headers)).json()["tasks"] == []
            # Descriptors of the last busy moment close soon after it; a leaked one never does.
            with suppress(AssertionError):
                await wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds_before + FD_SLACK, "fds close", 5)
            fds_after, kinds_after = len(os.listdir("/proc/self/fd")), fd_kinds()

            print(f"fds {fds_before} -> {fds_after}, {LIFECYCLES} lifecycles in {elapsed:.1f} s; "
                  f"before {kinds_before}, after {kinds_after}")
            assert fds_after <= fds_before + FD_SLACK, (
                f"{fds_after - fds_before} more open fds after {LIFECYCLES} lifecycles: "
                f"before {kinds_before}, after {kinds_after}"
            )
            assert eventfds() == eventfds_before, (kinds_before, kinds_after)
            assert kinds_after.get("anon_inode:[pidfd]", 0) == kinds_before.get("anon_inode:[pidfd]", 0)
            assert elapsed < 60, f"{LIFECYCLES} lifecycles took {elapsed:.1f} s"
        except BaseException:
            # Requests the failure cancelled client-side still run in the server: a moment
            # for them to create their tasks, so that the drain below deletes those too.
            await asyncio.sleep(1.0)
            raise
        finally:
            await drain(client)


async def batch(run: Callable[[str], Any], ids: list[str]) -> None:
    """All at once; the first failure cancels the rest (and waits for them)."""
    async with asyncio.TaskGroup() as group:
        for task_id in ids:
            group.create_task(run(task_id))


async def test_a_task_gone_from_get_can_be_created_again(
    client: httpx.AsyncClient, busybox_tar: Path, ns_headers: dict[str, str],
) -> None:
    """Found by the lifecycle loop above: once `wait` has answered, GET /tasks/{id} says
    404 (the exit is recorded) while the teardown still runs; in that window GET /tasks
    still lists the task and POST /tasks refuses a new one with 409 "already has a task".
    A client cannot tell when it may create the next task (DESIGN: exit means delete)."""
    await import_busybox(client, busybox_tar, ns_headers)
    await make_container(client, ns_headers, "again", ["true"])
    await run_task(client, ns_headers, "again")
    for _ in range(3):
        exit_ = (await client.post("/tasks/again/wait", headers=ns_headers)).json()
        assert exit_["exit_status"] == 0
        assert (await client.get("/tasks/again", headers=ns_headers)).status_code == 404
        listed = [task["id"] for task in (await client.get("/tasks", headers=ns_headers)).json()["tasks"]]
        created = await client.post("/tasks", json={"container_id": "again"}, headers=ns_headers)
        assert "again" not in listed, "GET /tasks/again is 404 but GET /tasks lists it"
        assert created.status_code == 201, f"GET /tasks/again is 404 but POST /tasks answers: {created.text}"
        assert (await client.post("/tasks/again/start", headers=ns_headers)).status_code == 200
