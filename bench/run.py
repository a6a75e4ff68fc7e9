"""`make bench`: Cargohold's workloads against the physical floor, in the same run.

Each workload runs against a real daemon (`cargohold serve`, a subprocess) on a unix
socket, driven from this one client process with httpx, after a warm-up; it reports p50,
p95 and max, and beside it the floor measured in the same run (a bare `runc run` of the
same bundle; a bare eventfd on memory.oom_control; the same requests to a server that
does nothing, bench/null_server.py; for W6's pulls, the same blobs fetched by a plain
httpx client, and `tar -x` of them, from the same local registry: bench/images.py). The
table is printed and written to bench/results.json. These machines are shared and noisy:
read the ratios.

    python -m bench.run [--runs 50] [--only W1,W3] [--quick] [--pulls 7]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.runtime.seccomp import DEFAULT_PROFILE_PATH, SeccompProfile  # noqa: E402
from bench.images import (  # noqa: E402
    BenchImage,
    Layout,
    bench_registry,
    blob_bytes,
    build_layout,
    fetch_to_disk,
    log_offset,
    missing_tools,
    reference,
    untar,
)
from tests.images.conftest import Registry  # noqa: E402
from tests.rootfs import write_busybox_tar  # noqa: E402

BASE_URL = "http://cargohold"
OOM_SCRIPT = "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"


# --- measuring ------------------------------------------------------------------------


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max": ordered[-1],
        "n": len(ordered),
    }


@dataclass
class Report:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, workload: str, metric: str, unit: str, value: Any, floor: Any = None, note: str = "") -> None:
        self.rows.append({"workload": workload, "metric": metric, "unit": unit, "value": value,
                          "floor": floor, "note": note})

    def print(self) -> None:
        header = ("workload", "metric", "p50/value", "p95", "max", "floor p50", "ratio")
        print("\n{:<4} {:<44} {:>12} {:>10} {:>10} {:>10} {:>7}".format(*header))
        for row in self.rows:
            value, floor = row["value"], row["floor"]
            if isinstance(value, dict):
                p50, p95, top = (f"{value[k]:.2f}" for k in ("p50", "p95", "max"))
            else:
                p50, p95, top = (f"{value:.2f}" if isinstance(value, float) else str(value)), "", ""
            floor_p50 = floor["p50"] if isinstance(floor, dict) else floor
            ratio = ""
            if isinstance(value, dict) and floor_p50:
                ratio = f"{value['p50'] / floor_p50:.2f}x"
            elif isinstance(value, float) and isinstance(floor_p50, float) and floor_p50:
                ratio = f"{value / floor_p50:.2f}x"
            floor_text = f"{floor_p50:.2f}" if isinstance(floor_p50, float) else ""
            print(f"{row['workload']:<4} {row['metric'] + ' (' + row['unit'] + ')':<44} {p50:>12} {p95:>10} {top:>10} "
                  f"{floor_text:>10} {ratio:>7}  {row['note']}")


def ms(seconds: float) -> float:
    return seconds * 1000


# --- the daemon under test ----------------------------------------------------------------


@dataclass
class Server:
    """A server subprocess on a unix socket: the daemon, or the null server (the HTTP floor)."""

    process: subprocess.Popen[bytes]
    socket: Path

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
        return httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=120, **kwargs)


@dataclass
class Daemon(Server):
    root: Path
    state: Path


@asynccontextmanager
async def serving(command: list[str], sock: Path, log_path: Path, probe: str,
                  env: dict[str, str] | None = None) -> AsyncIterator[Server]:
    """Start `command`, wait until `GET probe` answers 200 on `sock`; SIGTERM it at the end."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, **(env or {})})
    server = Server(process, sock)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with server.client() as client:
                    if (await client.get(probe)).status_code == 200:
                        break
            except (httpx.TransportError, OSError):
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{command[0]} did not start; see {log_path}")
            await asyncio.sleep(0.05)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@asynccontextmanager
async def daemon(work: Path, *extra: str) -> AsyncIterator[Daemon]:
    root, state = work / "root", work / "state"
    sock = state / "cargohold.sock"
    command = [str(ROOT / ".venv" / "bin" / "cargohold"), "serve", "--root", str(root), "--state", str(state),
               "--listen", f"unix://{sock}", "--log-level", "warning", *extra]
    async with serving(command, sock, work / "daemon.log", "/healthz") as server:
        yield Daemon(server.process, sock, root, state)


@asynccontextmanager
async def null_server(work: Path) -> AsyncIterator[Server]:
    """The HTTP floor (bench/null_server.py): the same uvicorn, an app that does nothing.
    A request's `Body-Bytes` header sets the size of the body it gets back."""
    sock = work / "null.sock"
    command = [sys.executable, "-m", "uvicorn", "bench.null_server:app", "--uds", str(sock), "--http", "httptools",
               "--lifespan", "off", "--no-access-log", "--log-level", "warning"]
    async with serving(command, sock, work / "null-server.log", "/", {"PYTHONPATH": str(ROOT)}) as server:
        yield server


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def conmon_pids(state: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"conmon") and any(str(state).encode() in a for a in argv):
                found.append(int(entry.name))
    return found


# --- helpers over the API --------------------------------------------------------------------


async def expect(response: Awaitable[httpx.Response], status: int) -> httpx.Response:
    result = await response
    if result.status_code != status:
        raise RuntimeError(f"{result.request.method} {result.request.url.path}: {result.status_code} {result.text}")
    return result


def spec(args: list[str], memory_limit: int | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": args}}
    if memory_limit is not None:
        document["linux"] = {"resources": {"memory": {"limit": memory_limit}}}
    return document


async def make_container(
    client: httpx.AsyncClient, name: str, args: list[str], memory_limit: int | None = None
) -> None:
    await expect(client.post("/snapshots", json={"key": name, "parent": "busybox"}), 201)
    await expect(client.post("/containers", json={"id": name, "snapshot_key": name,
                                                   "spec": spec(args, memory_limit)}), 201)


# --- floors: the runtime alone ------------------------------------------------------------------


def write_bundle(bundle: Path, rootfs_tar: Path, args: list[str], cgroup: str, memory_limit: int | None = None) -> None:
    (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", str(rootfs_tar), "-C", str(bundle / "rootfs")], check=True)
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True, cwd=bundle)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["linux"]["cgroupsPath"] = cgroup
    if memory_limit is not None:
        config["linux"].setdefault("resources", {})["memory"] = {"limit": memory_limit}
    (bundle / "config.json").write_text(json.dumps(config))


def bare_runc_run(bundle: Path, state: Path, runs: int) -> list[float]:
    samples = []
    for index in range(runs):
        started = time.perf_counter()
        subprocess.run(["runc", f"--root={state}", "run", "--bundle", str(bundle), f"floor{index}"],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return samples


async def bare_oom_notice(bundle: Path, state: Path, name: str) -> float:
    """runc create + start of the OOM script, with our own eventfd: start-return -> eventfd."""
    subprocess.run(["runc", f"--root={state}", "create", "--bundle", str(bundle), name], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    memory = Path("/sys/fs/cgroup/memory") / f"cargohold-bench/{name}"
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    control = os.open(memory / "memory.oom_control", os.O_RDONLY)
    (memory / "cgroup.event_control").write_text(f"{efd} {control}")
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[float] = loop.create_future()

    def signalled() -> None:
        if not fired.done():
            fired.set_result(time.perf_counter())

    loop.add_reader(efd, signalled)
    try:
        subprocess.run(["runc", f"--root={state}", "start", name], check=True)
        started = time.perf_counter()
        return await asyncio.wait_for(fired, 30) - started
    finally:
        loop.remove_reader(efd)
        os.close(efd)
        os.close(control)
        subprocess.run(["runc", f"--root={state}", "delete", "--force", name], check=False)


def remove_bench_cgroups() -> None:
    """The floors' cgroups (/cargohold-bench/...), emptied when their containers went."""
    subprocess.run(["sh", "-c", "for h in /sys/fs/cgroup/*/cargohold-bench; do find $h -depth -type d "
                    "-exec rmdir {} \\; ; done 2>/dev/null"], check=False)


# --- workloads ---------------------------------------------------------------------------------


def w1_requests(name: str) -> list[tuple[str, str, str, dict[str, Any] | None, int]]:
    """One W1 run: (phase, method, path, JSON body, expected status) of each request."""
    return [
        ("prepare+container", "POST", "/snapshots", {"key": name, "parent": "busybox"}, 201),
        ("prepare+container", "POST", "/containers", {"id": name, "snapshot_key": name, "spec": spec(["/bin/true"])},
         201),
        ("task create", "POST", "/tasks", {"container_id": name}, 201),
        ("start", "POST", f"/tasks/{name}/start", None, 200),
        # wait answers once the task is deleted too (exit means delete): the container can go
        ("wait", "POST", f"/tasks/{name}/wait", None, 200),
        ("delete", "DELETE", f"/containers/{name}", None, 204),
    ]


async def w1_runs(server: Server, runs: int, floor: bool = False) -> dict[str, list[float]]:
    """W1's requests, `runs` times after 3 of warm-up: ms per phase, per run. `floor`: the
    server is the null server, which answers 200 to everything."""
    phases: dict[str, list[float]] = {}
    async with server.client() as client:
        for index in range(runs + 3):
            spent: dict[str, float] = {}
            for phase, method, path, body, status in w1_requests(f"w1-{index}"):
                started = time.perf_counter()
                await expect(client.request(method, path, json=body), 200 if floor else status)
                spent[phase] = spent.get(phase, 0.0) + time.perf_counter() - started
            if index >= 3:
                for phase, seconds in spent.items():
                    phases.setdefault(phase, []).append(ms(seconds))
    return phases


async def w1_run_to_completion(d: Daemon, work: Path, tar: Path, runs: int, report: Report) -> None:
    bundle = work / "floor-bundle"
    write_bundle(bundle, tar, ["/bin/true"], "/cargohold-bench/w1")
    floor_state = work / "floor-runc"
    bare_runc_run(bundle, floor_state, 3)  # warm-up
    phases = await w1_runs(d, runs)
    totals = [sum(run) for run in zip(*phases.values(), strict=True)]
    floor = summary([ms(s) for s in bare_runc_run(bundle, floor_state, runs)])
    path = await runtime_path(bundle, work / "runtime-path", runs)
    path_totals = [sum(run) for run in zip(*path.values(), strict=True)]
    async with null_server(work) as null:
        http = await w1_runs(null, runs, floor=True)
    http_totals = [sum(run) for run in zip(*http.values(), strict=True)]
    report.add("W1", "run to completion", "ms", summary(totals), floor, f"{runs} sequential runs")
    for phase, samples in phases.items():
        report.add("W1", f"  phase: {phase}", "ms", summary(samples))
    report.add("W1", "runtime path alone (no daemon)", "ms", summary(path_totals), floor,
               "the daemon's Conmon and OCIRuntime, driven directly")
    for step, samples in path.items():
        report.add("W1", f"  step: {step}", "ms", summary(samples))
    report.add("W1", "HTTP floor: the 6 requests, a server doing nothing", "ms", summary(http_totals), floor,
               "httpx + uvicorn alone (bench/null_server.py)")
    report.add("W1", "runtime path + HTTP floor", "ms",
               summary([a + b for a, b in zip(path_totals, http_totals, strict=True)]), floor,
               "what any daemon driving conmon over this HTTP stack starts from")
    # The daemon gives every task Docker's default seccomp profile (the spec policy); runc
    # compiles it at create. The same floor with that profile shows what it costs any runtime.
    seccomp_bundle = work / "floor-bundle-seccomp"
    write_bundle(seccomp_bundle, tar, ["/bin/true"], "/cargohold-bench/w1s")
    config = json.loads((seccomp_bundle / "config.json").read_text())
    bounding = config["process"]["capabilities"]["bounding"]
    config["linux"]["seccomp"] = SeccompProfile.load(DEFAULT_PROFILE_PATH).for_capabilities(bounding)
    (seccomp_bundle / "config.json").write_text(json.dumps(config))
    bare_runc_run(seccomp_bundle, floor_state, 3)  # warm-up
    seccomp_floor = [ms(s) for s in bare_runc_run(seccomp_bundle, floor_state, runs)]
    report.add("W1", "bare runc run with the default seccomp profile", "ms", summary(seccomp_floor), floor,
               "the floor plus the profile every task gets")
    # Issue 17's figure: what is left to the daemon once the parts any daemon on this design
    # pays are taken out (differences of p50s, so as noisy as the sum of theirs).
    profile = statistics.median(seccomp_floor) - floor["p50"]
    own = summary(totals)["p50"] - summary(path_totals)["p50"] - summary(http_totals)["p50"] - profile
    report.add("W1", "the daemon's own share", "ms", round(own, 1), floor["p50"],
               f"W1 - runtime path alone - HTTP floor - the seccomp profile's cost ({profile:.1f} ms), p50s")


async def runtime_path(bundle: Path, work: Path, runs: int) -> dict[str, list[float]]:
    """W1's runtime steps with no daemon around them: the daemon's own Conmon and
    OCIRuntime on the floor's bundle. W1 minus this is what the daemon adds (HTTP,
    SQLite, the snapshot, the bundle, the rootfs mount, the teardown's other parts)."""
    from app.runtime.conmon import Conmon, ExitWatch
    from app.runtime.layout import ProcessFiles
    from app.runtime.oci import OCIRuntime

    runtime = OCIRuntime("runc", shutil.which("runc") or "runc", work / "runc")
    conmon = Conmon(shutil.which("conmon") or "conmon", 1 << 20)
    steps: dict[str, list[float]] = {k: [] for k in ("conmon + runc create", "runc start", "exit seen", "runc delete")}
    for index in range(runs + 3):
        name, task_dir = f"path{index}", work / f"path{index}"
        try:
            t0 = time.perf_counter()
            started = await conmon.create(name, bundle, runtime, ProcessFiles(task_dir, task_dir / "log"))
            t1 = time.perf_counter()
            exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ExitWatch(started.conmon_pid, functools.partial(exited.set_result, None))
            await runtime.start(name)
            t2 = time.perf_counter()
            await asyncio.wait_for(exited, 30)
            t3 = time.perf_counter()
            await runtime.delete(name)
            t4 = time.perf_counter()
        except BaseException:
            await runtime.delete(name)  # kills and removes what a failed step left
            raise
        finally:
            shutil.rmtree(task_dir, ignore_errors=True)
        if index >= 3:  # warm-up
            for step, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                steps[step].append(ms(seconds))
    return steps


async def delete_container(client: httpx.AsyncClient, name: str) -> None:
    """The container goes once its task's teardown has finished (exit means delete)."""
    for _ in range(500):
        response = await client.delete(f"/containers/{name}")
        if response.status_code == 204:
            return
        if response.status_code != 409:
            raise RuntimeError(response.text)
        await asyncio.sleep(0.002)
    raise RuntimeError(f"container {name} still has a task")


@dataclass
class Throughput:
    ops_per_second: float
    server_cpu_ms_per_op: float  # the server's own cost, whatever the client can drive
    client_cpu_ms_per_op: float  # this process's (httpx's) cost


# Requests in flight in W2's throughput runs. The one client process is the bottleneck:
# httpx costs it 1-2 ms of CPU a request, and more per request the more connections it
# juggles. Measured here (1,000 each, two rounds): with 4 in flight creates ran at
# 307-426/s and gets at 584-767/s, with 16 at 230-293/s and 430-595/s.
W2_IN_FLIGHT = 4


async def timed_ops(
    server: Server, count: int, operation: Callable[[httpx.AsyncClient, int], Awaitable[Any]],
    concurrency: int = W2_IN_FLIGHT,
) -> Throughput:
    """`count` calls of `operation`, `concurrency` in flight, each worker on a connection
    of its own (httpx's shared pool costs the client O(connections) per request)."""
    queue = iter(range(count))

    async def worker() -> None:
        async with server.client() as client:
            for index in queue:
                await operation(client, index)

    server_before, client_before = cpu_seconds(server.process.pid), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(server.process.pid) - server_before, time.process_time() - client_before
    return Throughput(count / elapsed, 1000 * server_cpu / count, 1000 * client_cpu / count)


def add_throughput(report: Report, metric: str, result: Throughput, note: str = "") -> None:
    report.add("W2", metric, "ops/s", round(result.ops_per_second, 1), None,
               f"server CPU {result.server_cpu_ms_per_op:.2f} ms/op"
               f" (= {1000 / result.server_cpu_ms_per_op:,.0f}/s per core), client {result.client_cpu_ms_per_op:.2f}"
               f"{note}")


async def w2_metadata(d: Daemon, work: Path, report: Report, quick: bool) -> None:
    spec_doc = spec(["/bin/true"])
    count = 1000
    headers = {"Cargohold-Namespace": "w2"}

    def body(index: int) -> dict[str, Any]:
        return {"id": f"c{index}", "spec": spec_doc,
                "labels": {"app": f"app{index % 10}", "tier": "web", "index": str(index)}}

    creates = await timed_ops(d, count, lambda c, i: expect(c.post("/containers", json=body(i), headers=headers), 201))
    gets = await timed_ops(d, count, lambda c, i: expect(c.get(f"/containers/c{i}", headers=headers), 200))
    async with d.client() as client:
        get_size = len((await expect(client.get("/containers/c0", headers=headers), 200)).content)
    patches = await timed_ops(d, count, lambda c, i: expect(c.patch(
        f"/containers/c{i}", json={"labels": {"tier": "db"}}, headers=headers), 200))
    async with d.client() as client:
        for _ in range(3):  # warm-up
            await timed(client.get("/containers", headers=headers))
        list_all = [ms(await timed(client.get("/containers", headers=headers))) for _ in range(20)]
        list_size = len((await expect(client.get("/containers", headers=headers), 200)).content)
        list_filtered = [ms(await timed(client.get("/containers", params={"filter": "labels.app==app3"},
                                                    headers=headers))) for _ in range(20)]
    lists = await timed_ops(d, 200, lambda c, i: expect(c.get("/containers", headers=headers), 200))
    filtered_lists = await timed_ops(d, 200, lambda c, i: expect(c.get(
        "/containers", params={"filter": "labels.app==app3"}, headers=headers), 200))
    deletes = await timed_ops(d, count, lambda c, i: expect(c.delete(f"/containers/c{i}", headers=headers), 204))
    async with null_server(work) as null:
        sized = {**headers, "Body-Bytes": str(get_size)}
        floor = await timed_ops(null, count, lambda c, i: expect(c.get(f"/containers/c{i}", headers=sized), 200))
        async with null.client(headers={**headers, "Body-Bytes": str(list_size)}) as client:
            list_floor = [ms(await timed(client.get("/containers"))) for _ in range(23)][3:]
    add_throughput(report, "HTTP floor: the same gets, a server doing nothing", floor,
                   f"; {get_size} B bodies, as a get's (bench/null_server.py)")
    add_throughput(report, "create 1,000 (3 labels each)", creates, f"; {W2_IN_FLIGHT} in flight")
    add_throughput(report, "get", gets)
    add_throughput(report, "patch one label", patches)
    add_throughput(report, "delete", deletes)
    add_throughput(report, "list 1,000 (full specs)", lists)
    add_throughput(report, "list filtered to 100 of 1,000", filtered_lists)
    report.add("W2", "list 1,000 (full specs)", "ms", summary(list_all), summary(list_floor),
               f"floor: a body as large ({list_size:,} B) from a server doing nothing")
    report.add("W2", "list filtered to 100 of 1,000", "ms", summary(list_filtered))
    big = 2000 if quick else 10_000
    big_headers = {"Cargohold-Namespace": "w2big"}
    await timed_ops(d, big, lambda c, i: expect(c.post("/containers", json={
        "id": f"b{i}", "spec": spec_doc, "labels": {"group": f"g{i % (big // 100)}"}}, headers=big_headers), 201))
    async with d.client() as client:
        await timed(client.get("/containers", params={"filter": "labels.group==g7"}, headers=big_headers))
        big_filtered = [ms(await timed(client.get("/containers", params={"filter": "labels.group==g7"},
                                                   headers=big_headers))) for _ in range(20)]
        # `limit`: a page holds 1,000 containers unless asked for more (at most 10,000).
        big_all = [ms(await timed(client.get("/containers", params={"limit": big}, headers=big_headers)))
                   for _ in range(5)]
    report.add("W2", f"list filtered to 100 of {big:,}", "ms", summary(big_filtered))
    report.add("W2", f"list all {big:,} (full specs)", "ms", summary(big_all))


async def timed(response: Awaitable[httpx.Response]) -> float:
    started = time.perf_counter()
    result = await response
    if result.status_code != 200:
        raise RuntimeError(result.text)
    return time.perf_counter() - started


async def w3_oom_notice(d: Daemon, work: Path, tar: Path, runs: int, report: Report) -> None:
    bundle = work / "oom-bundle"
    write_bundle(bundle, tar, ["sh", "-c", OOM_SCRIPT], "/cargohold-bench/oom", 32 * 1024 * 1024)
    floors = []
    for index in range(runs):
        config = json.loads((bundle / "config.json").read_text())
        config["linux"]["cgroupsPath"] = f"/cargohold-bench/oom{index}"
        (bundle / "config.json").write_text(json.dumps(config))
        floors.append(ms(await bare_oom_notice(bundle, work / "oom-runc", f"oom{index}")))
    remove_bench_cgroups()
    samples = []
    async with d.client() as client, d.client() as watcher:
        for index in range(runs):
            name = f"w3-{index}"
            await make_container(client, name, ["sh", "-c", OOM_SCRIPT], 32 * 1024 * 1024)
            await expect(client.post("/tasks", json={"container_id": name}), 201)
            seen: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            ready = asyncio.Event()

            async def subscribe(name: str = name, seen: asyncio.Future[float] = seen,
                                ready: asyncio.Event = ready) -> None:
                params = {"filter": f'topic=="/tasks/oom",event.container_id=={name}'}
                async with watcher.stream("GET", "/events", params=params) as stream:
                    ready.set()
                    async for line in stream.aiter_lines():
                        if line.startswith("data:"):
                            seen.set_result(time.perf_counter())
                            return

            subscriber = asyncio.create_task(subscribe())
            await ready.wait()
            await expect(client.post(f"/tasks/{name}/start"), 200)
            started = time.perf_counter()
            samples.append(ms(await asyncio.wait_for(seen, 30) - started))
            await subscriber
            await expect(client.post(f"/tasks/{name}/wait"), 200)
            await delete_container(client, name)
    report.add("W3", "OOM kill -> /tasks/oom at an SSE subscriber", "ms", summary(samples), summary(floors),
               f"{runs} runs; floor: bare runc + own eventfd")


async def w4_footprint(d: Daemon, report: Report, quick: bool, fresh_idle: float) -> None:
    idle = rss_kib(d.process.pid) / 1024
    report.add("W4", "daemon RSS idle, fresh", "MiB", round(fresh_idle, 1), None,
               "after start-up and the busybox import")
    report.add("W4", "daemon RSS idle, after the other workloads", "MiB", round(idle, 1), None,
               "whatever of W1-W3, W5 ran before (W2 lists 10,000 containers)")
    tasks = 10 if quick else 50
    async with d.client() as client:
        for index in range(tasks):
            name = f"w4-{index}"
            await make_container(client, name, ["sleep", "3600"])
            await expect(client.post("/tasks", json={"container_id": name}), 201)
            await expect(client.post(f"/tasks/{name}/start"), 200)
        await asyncio.sleep(2)
        daemon_rss = rss_kib(d.process.pid) / 1024
        conmons = conmon_pids(d.state)
        conmon_rss = sum(rss_kib(pid) for pid in conmons) / 1024
        window = 10 if quick else 30
        before = cpu_seconds(d.process.pid)
        await asyncio.sleep(window)
        share = (cpu_seconds(d.process.pid) - before) / window * 100
        report.add("W4", f"daemon RSS with {tasks} tasks", "MiB", round(daemon_rss, 1))
        report.add("W4", f"+ {len(conmons)} conmon RSS", "MiB", round(conmon_rss, 1),
                   None, f"{(daemon_rss - idle + conmon_rss) / tasks:.2f} MiB per task beyond idle")
        report.add("W4", f"daemon CPU over {window} s, monitor at 1 s", "% of a core", round(share, 2))
        for index in range(tasks):
            await expect(client.delete(f"/tasks/w4-{index}"), 200)
            await delete_container(client, f"w4-{index}")


async def monitor_loop_hold(work: Path, report: Report, tasks: int = 100) -> None:
    """The monitor polling `tasks` cgroups (a v1 tree with this host's file formats): the
    longest the event loop is held at a time, seen by a 1 ms ticker."""
    from app.monitor.cgroup_stats import CgroupMode
    from app.monitor.monitor import Monitor

    root = work / "fake-cgroups"
    files = {
        "memory": {"memory.usage_in_bytes": "1048576\n", "memory.limit_in_bytes": "33554432\n",
                   "memory.max_usage_in_bytes": "2097152\n", "memory.failcnt": "0\n",
                   "memory.stat": "cache 0\nrss 1048576\ntotal_cache 0\ntotal_rss 1048576\n",
                   "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"},
        "cpuacct": {"cpuacct.usage": "123456789\n"},
        "cpu": {"cpu.stat": "nr_periods 10\nnr_throttled 1\nthrottled_time 1000\n"},
        "pids": {"pids.current": "2\n", "pids.max": "max\n"},
        "blkio": {"blkio.throttle.io_service_bytes": "254:0 Read 4096\n254:0 Write 8192\nTotal 12288\n"},
    }
    monitor = Monitor(CgroupMode.LEGACY, 0.1, root=root)
    for index in range(tasks):
        for controller, contents in files.items():
            directory = root / controller / "cargohold" / "bench" / f"t{index}"
            directory.mkdir(parents=True)
            for name, text in contents.items():
                (directory / name).write_text(text)

    async def no_oom(namespace: str, container_id: str, stats: Any) -> None:
        return None

    import logging

    logging.getLogger("app.monitor.monitor").setLevel(logging.ERROR)  # no eventfd on fake files
    for index in range(tasks):
        monitor.watch("bench", f"t{index}", f"/cargohold/bench/t{index}", no_oom)
    holds: list[float] = []
    polls: list[float] = []
    monitor.start()
    try:
        end = time.perf_counter() + 3
        while time.perf_counter() < end:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            holds.append(ms(time.perf_counter() - before - 0.001))
        for _ in range(10):
            started = time.perf_counter()
            await monitor.poll_once()
            polls.append(ms(time.perf_counter() - started))
    finally:
        await monitor.close()
    report.add("W4", f"monitor: loop held per tick, {tasks} tasks polled", "ms", summary(holds), None,
               "1 ms ticker during 3 s of polls every 0.1 s")
    report.add("W4", f"monitor: one poll of {tasks} tasks (in a thread)", "ms", summary(polls))


async def w5_fanout(d: Daemon, report: Report) -> None:
    subscribers = 20
    containers = 100
    expected = 2 * containers
    counts = [0] * subscribers
    done_at: list[float | None] = [None] * subscribers
    async with d.client(limits=httpx.Limits(max_connections=64)) as client:
        ready = asyncio.Semaphore(0)

        async def subscribe(index: int) -> None:
            params = {"filter": 'namespace==w5,topic~="^/containers/"'}
            async with client.stream("GET", "/events", params=params) as stream:
                ready.release()
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        counts[index] += 1
                        if counts[index] == expected:
                            done_at[index] = time.perf_counter()
                            return

        readers = [asyncio.create_task(subscribe(i)) for i in range(subscribers)]
        for _ in range(subscribers):
            await ready.acquire()
        headers = {"Cargohold-Namespace": "w5"}
        spec_doc = spec(["/bin/true"])
        for index in range(containers):
            await expect(client.post("/containers", json={"id": f"f{index}", "spec": spec_doc}, headers=headers), 201)
        for index in range(containers):
            await expect(client.delete(f"/containers/f{index}", headers=headers), 204)
        last_ack = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*readers), 60)
        lag = [ms((at or last_ack) - last_ack) for at in done_at]
        report.add("W5", f"{subscribers} subscribers complete after last ack", "ms", summary(lag), None,
                   f"{expected} events each")


# --- W6: images ---------------------------------------------------------------------------------


def pull_body(reference: str) -> dict[str, Any]:
    return {"reference": reference, "plain_http": True}


async def pull(client: httpx.AsyncClient, reference: str) -> float:
    """POST /images/pull of `reference`, to the image's row: seconds."""
    started = time.perf_counter()
    await expect(client.post("/images/pull", json=pull_body(reference)), 201)
    return time.perf_counter() - started


async def reclaim(d: Daemon, client: httpx.AsyncClient, reference: str, image: BenchImage) -> bool:
    """Delete the image and collect garbage; True if its blobs and chain snapshots are gone
    (the next pull downloads and unpacks everything again)."""
    from app.images.unpack import chain_ids

    await expect(client.delete(f"/images/{reference}"), 204)
    await client.post("/gc")  # were there no GC, the blobs would stay: the caller starts a fresh daemon
    blobs = d.root / "content" / "blobs" / "sha256"
    parts = (image.manifest, image.config, *image.layers)
    if any((blobs / blob.digest.removeprefix("sha256:")).exists() for blob in parts):
        return False
    for chain_id in chain_ids([layer.diff_id for layer in image.layers]):
        if (await client.get(f"/snapshots/{chain_id}")).status_code != 404:
            return False
    return True


async def pull_phases(client: httpx.AsyncClient, reference: str, image: BenchImage) -> dict[str, float]:
    """One pull with `Accept: text/event-stream`: seconds spent in each step (every blob in;
    each layer unpacked; the image written) from the SSE events' arrival, and in total."""
    started = time.perf_counter()
    fetched: dict[str, float] = {}
    unpacked: dict[str, float] = {}
    done = 0.0
    event = ""
    async with client.stream("POST", "/images/pull", json=pull_body(reference),
                             headers={"Accept": "text/event-stream"}) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                at = time.perf_counter() - started
                data = json.loads(line.removeprefix("data:"))
                if event == "progress" and data["bytes"] == data["total"]:
                    fetched.setdefault(data["digest"], at)
                elif event == "unpacked":
                    unpacked[data["layer"]] = at
                elif event == "done":
                    done = at
                elif event == "error":
                    raise RuntimeError(f"pull of {reference}: {data}")
    phases = {"download": max(fetched[layer.digest] for layer in image.layers)}
    mark = phases["download"]
    for index, layer in enumerate(image.layers):
        phases[f"unpack layer {index + 1}"] = unpacked[layer.digest] - mark
        mark = unpacked[layer.digest]
    phases["image written"] = done - mark
    phases["total"] = time.perf_counter() - started
    return phases


@dataclass
class FloorRun:
    fetch: float  # seconds
    layers: list[tuple[float, float]]  # (tar -x, syncfs) seconds per layer
    cpu: float  # seconds of CPU: this process's during the fetch, tar's and sync's


async def floor_run(registry: Registry, image: BenchImage, work: Path) -> FloorRun:
    """The floor once; its files removed after."""
    try:
        cpu = time.process_time()
        fetched = await fetch_to_disk(registry, image, work / "blobs")
        cpu = time.process_time() - cpu
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        layers = untar(image, work / "blobs", work / "tree")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu += after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        return FloorRun(fetched, layers, cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def version_latency(client: httpx.AsyncClient, until: asyncio.Future[Any] | None,
                          count: int = 100) -> list[float]:
    """GET /version, one at a time every 10 ms: until `until` is done, or `count` times."""
    samples: list[float] = []
    while (until is None and len(samples) < count) or (until is not None and not until.done()):
        started = time.perf_counter()
        await expect(client.get("/version"), 200)
        samples.append(ms(time.perf_counter() - started))
        await asyncio.sleep(0.01)
    return samples


def vm_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return 0


async def w6_rss(work: Path, registry: Registry, image: BenchImage, report: Report) -> None:
    """A fresh daemon pulls tiny (its first pull: what that loads stays), then `image` (one
    large layer): the RSS peak of that pull over the RSS before it."""
    async with daemon(work) as d, d.client() as client:
        for _ in range(20):
            await expect(client.get("/version"), 200)
        fresh = vm_kib(d.process.pid, "VmRSS")
        await pull(client, reference(registry, "tiny"))
        await asyncio.sleep(0.5)
        idle = vm_kib(d.process.pid, "VmRSS")
        try:  # 5: reset VmHWM to the current RSS (proc(5)), so it is this pull's peak
            Path(f"/proc/{d.process.pid}/clear_refs").write_text("5")
            reset = True
        except OSError:
            reset = False
        pulling = asyncio.ensure_future(pull(client, reference(registry, image.tag)))
        sampled = idle
        while not pulling.done():
            sampled = max(sampled, vm_kib(d.process.pid, "VmRSS"))
            await asyncio.sleep(0.01)
        seconds = pulling.result()
        peak = max(sampled, vm_kib(d.process.pid, "VmHWM") if reset else 0)
        after = vm_kib(d.process.pid, "VmRSS")
    layer = image.layers[0]
    report.add("W6", f"daemon RSS growth pulling one {layer.size / 2**20:.0f} MiB layer", "MiB",
               round((peak - idle) / 1024, 1), None,
               f"peak {peak / 1024:.1f} MiB ({'VmHWM' if reset else 'VmRSS every 10 ms'}) over {idle / 1024:.1f}; "
               f"{after / 1024:.1f} after; pull {seconds:.1f} s; target < 50 MiB")
    report.add("W6", "  daemon RSS growth of its first pull (tiny)", "MiB", round((idle - fresh) / 1024, 1), None,
               f"{fresh / 1024:.1f} MiB fresh: what the first pull loads, once")


async def w6_loop_hold(work: Path, registry: Registry, image: BenchImage, report: Report) -> None:
    """The daemon's services in this process (no HTTP) pull `image`: the longest the event
    loop is held at a time, seen by a 1 ms ticker (as W4's monitor row)."""
    from app.config import Settings
    from app.daemon import open_daemon
    from app.models import ImagePull

    settings = Settings(root=work / "root", state=work / "state")
    async with open_daemon(settings) as inproc:
        pulling = asyncio.ensure_future(inproc.images.pull(
            "default", ImagePull(reference=reference(registry, image.tag), plain_http=True)))
        holds: list[float] = []
        while not pulling.done():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            holds.append(ms(time.perf_counter() - before - 0.001))
        pulling.result()
    shutil.rmtree(work, ignore_errors=True)
    report.add("W6", "pull: loop held per tick", "ms", summary(holds), None,
               "1 ms ticker; the daemon's services in the bench process, no HTTP")


async def w6_images(work: Path, registry: Registry, layout: Layout, runs: int, report: Report) -> dict[str, float]:
    """W6 against `registry` (holding `layout`'s images): cold pulls of big against the
    floor, then shared's bytes, GET /version during a pull, the loop, the RSS. Returns the
    cold pull's summary (ms)."""
    big, shared = layout.images["big"], layout.images["shared"]
    big_ref, shared_ref = reference(registry, "big"), reference(registry, "shared")
    samples: list[float] = []
    fetches: list[float] = []
    untars: list[list[float]] = []
    syncs: list[list[float]] = []
    cpus: list[tuple[float, float]] = []  # (the daemon's, the floor's) CPU seconds per run
    streamed: dict[str, list[float]] = {}
    started = 0  # daemons, each on a root of its own
    async with AsyncExitStack() as stack:

        async def fresh_daemon() -> tuple[Daemon, httpx.AsyncClient]:
            """Stop the daemon (if any) and start one on a fresh root (the old one removed)."""
            nonlocal started
            await stack.aclose()
            shutil.rmtree(work / f"d{started - 1}", ignore_errors=True)
            d = await stack.enter_async_context(daemon(work / f"d{started}"))
            started += 1
            client = await stack.enter_async_context(d.client())
            await pull(client, reference(registry, "tiny"))  # a daemon's first pull loads what pulls need
            return d, client

        d, client = await fresh_daemon()

        async def cold() -> tuple[Daemon, httpx.AsyncClient]:
            """The image gone and collected; or, with no GC (yet), a fresh daemon."""
            return (d, client) if await reclaim(d, client, big_ref, big) else await fresh_daemon()

        # Each run: the floor, a plain pull, then a pull with progress events (where the time goes).
        for index in range(runs + 1):  # the first warms up
            floor = await floor_run(registry, big, work / "floor")
            cpu = cpu_seconds(d.process.pid)
            seconds = await pull(client, big_ref)
            cpu = cpu_seconds(d.process.pid) - cpu
            d, client = await cold()
            phases = await pull_phases(client, big_ref, big)
            d, client = await cold()
            if index > 0:
                samples.append(ms(seconds))
                fetches.append(ms(floor.fetch))
                untars.append([ms(tar) for tar, _ in floor.layers])
                syncs.append([ms(sync) for _, sync in floor.layers])
                cpus.append((cpu, floor.cpu))
                for phase, spent in phases.items():
                    streamed.setdefault(phase, []).append(ms(spent))
        await pull(client, big_ref)
        since = log_offset(registry)
        shared_seconds = await pull(client, shared_ref)
        sent = blob_bytes(registry, since)
        await expect(client.delete(f"/images/{shared_ref}"), 204)
        d, client = await cold()
        idle = await version_latency(client, None)
        pulling = asyncio.ensure_future(pull(client, big_ref))
        async with d.client() as prober:
            during = await version_latency(prober, pulling)
        await pulling
    cold_pulls = summary(samples)
    floor_fetch = summary(fetches)
    floor_total = summary([f + sum(t) for f, t in zip(fetches, untars, strict=True)])
    how_cold = ("a fresh daemon and root for each (no POST /gc), warmed by a tiny pull" if started > 1
                else "image deleted + POST /gc between runs")
    report.add("W6", f"pull + unpack, 3 layers, {big.size / 2**20:.0f} MiB gzip", "ms", cold_pulls, floor_total,
               f"{runs} cold pulls ({how_cold}); floor: httpx fetch + tar -xzf; CPU p50: the daemon "
               f"{statistics.median(c for c, _ in cpus):.2f} s, the floor {statistics.median(f for _, f in cpus):.2f}")
    report.add("W6", "  the same against the fetch alone", "ms", cold_pulls, floor_fetch,
               "floor: httpx, all layers at once, to files, fsynced")
    report.add("W6", "  the same against fetch + tar + syncfs", "ms", cold_pulls,
               summary([f + sum(t) + sum(y) for f, t, y in zip(fetches, untars, syncs, strict=True)]),
               "floor: with `sync -f` after each layer, as the daemon's syncfs")
    report.add("W6", "  floor: sync -f after each layer, 3 in all", "ms", summary([sum(y) for y in syncs]), None,
               "syncfs flushes the whole filesystem: others' writes too, on a shared machine")
    report.add("W6", "  with Accept: text/event-stream", "ms", summary(streamed["total"]), floor_total,
               f"{runs} more cold pulls; the rows below split them by their events")
    report.add("W6", "    all blobs in", "ms", summary(streamed["download"]), floor_fetch,
               "the last layer's progress at its total; floor: the fetch")
    for index, layer in enumerate(big.layers):
        report.add("W6", f"    unpack layer {index + 1}: {layer.what}", "ms",
                   summary(streamed[f"unpack layer {index + 1}"]),
                   summary([t[index] + y[index] for t, y in zip(untars, syncs, strict=True)]),
                   f"{layer.size / 2**20:.1f} MiB gzip, {layer.unpacked / 2**20:.1f} MiB tar; "
                   f"floor: tar -xzf + sync -f (tar alone {statistics.median(t[index] for t in untars):.1f})")
    report.add("W6", "    image written, done", "ms", summary(streamed["image written"]))
    shared_layers = [layer for layer in shared.layers if layer in big.layers]
    new_layers = [layer for layer in shared.layers if layer not in big.layers]
    expected = shared.config.size + sum(layer.size for layer in new_layers)
    downloaded = sum(size for key, size in sent.items() if not key.startswith("manifest "))
    refetched = sum(sent.get(layer.digest, 0) for layer in shared_layers)
    report.add("W6", f"second image, {len(shared_layers)} of 3 layers shared: blob bytes", "B", downloaded, None,
               f"expected {expected:,} (new layer {new_layers[0].size:,} + config); shared layers' bytes "
               f"fetched: {refetched}; + {sum(v for k, v in sent.items() if k.startswith('manifest '))} B of "
               f"manifests; pull + unpack {ms(shared_seconds):.0f} ms")
    report.add("W6", "GET /version during a pull", "ms", summary(during), summary(idle),
               "one at a time, every 10 ms; floor: the same daemon idle")
    await w6_loop_hold(work / "inproc", registry, big, report)
    await w6_rss(work / "rss", registry, layout.images["huge"], report)
    return cold_pulls


def w6_pulls(args: argparse.Namespace) -> int:
    return min(args.pulls, 3) if args.quick else int(args.pulls)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--only", default="W1,W2,W3,W4,W5,W6,W7,W8,W10,W11")
    parser.add_argument("--rounds", type=int, default=3, help="W10's alternating rounds (1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smaller W2/W4/W6 for a smoke run (W6: a 10 MiB image)")
    parser.add_argument("--pulls", type=int, default=7, help="W6's cold pulls (3 with --quick)")
    args = parser.parse_args(argv)
    chosen = set(args.only.upper().split(","))
    for binary in ("runc", "conmon", "busybox"):
        if shutil.which(binary) is None:
            raise SystemExit(f"bench needs {binary}: run `make system-packages` as root")
    if "W6" in chosen and (missing := missing_tools()):
        raise SystemExit(f"W6 needs {', '.join(missing)}: run `make test-packages` as root")
    report = Report()
    with tempfile.TemporaryDirectory(prefix="cargohold-bench-") as tmp:
        work = Path(tmp)
        tar = write_busybox_tar(work / "busybox.tar")
        async with daemon(work / "d") as d:
            async with d.client() as client:
                await expect(client.post("/snapshots/import?name=busybox", content=tar.read_bytes()), 201)
                for _ in range(20):  # warm-up: the first requests build FastAPI's caches
                    await expect(client.get("/version"), 200)
            fresh_idle = rss_kib(d.process.pid) / 1024
            if "W1" in chosen:
                await w1_run_to_completion(d, work, tar, args.runs, report)
            if "W2" in chosen:
                await w2_metadata(d, work, report, args.quick)
            if "W3" in chosen:
                await w3_oom_notice(d, work, tar, 3 if args.quick else 10, report)
            if "W5" in chosen:
                await w5_fanout(d, report)
            if "W4" in chosen:
                await w4_footprint(d, report, args.quick, fresh_idle)
                await monitor_loop_hold(work, report)
            if "W7" in chosen:  # bench/networking.py (imported here: it imports this module)
                from bench.networking import w7_networking

                await w7_networking(d, args.runs, report)
            if "W8" in chosen:  # bench/attach.py
                from bench.attach import w8_attach

                await w8_attach(d, report, args.quick)
        if chosen & {"W10", "W11"}:  # bench/requests.py: a fresh daemon of its own beside the null server
            from bench.requests import run as w10_w11

            await w10_w11(report, work / "w10", 1 if args.quick else args.rounds, w11="W11" in chosen)
        if "W6" in chosen:
            layout = build_layout(work / "w6-layout", args.quick)
            with bench_registry(work / "w6-registry", layout) as registry:
                await w6_images(work / "w6", registry, layout, w6_pulls(args), report)
    remove_bench_cgroups()
    report.print()
    write_results("results.json", "make bench", report)
    return 0


def write_results(name: str, command: str, report: Report, machine: dict[str, Any] | None = None,
                  **extra: Any) -> None:
    """bench/<name>: the rows with the date, the machine (plus `machine`) and the command."""
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    **(machine or {})},
        **extra,
        "command": command,
        "rows": report.rows,
    }
    (ROOT / "bench" / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
