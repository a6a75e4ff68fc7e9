"""W10 and W11: what a metadata request costs the daemon, beside a server that does nothing
and beside containerd, in one run (issue 17).

W10: create (3 labels, a full spec), get, patch one label, list 1,000 and delete, each
1,000 times from one sequential client, and "nothing": a request the server does no work
for (Cargohold's `GET /healthz`, containerd's `Version`), the floor of each one's stack.
The figure is the server's CPU per operation, read from `/proc/<pid>/task/*/schedstat`
(all its threads) before and after, so the client's own cost does not count. Three
sides, in alternating rounds, and the median round is reported:
- Cargohold (`cargohold serve` on a unix socket, a fresh database);
- the null server (bench/null_server.py: the same uvicorn and httptools, an app that
  answers at once), sent the same requests and answering bodies as large as Cargohold's:
  the HTTP floor under any daemon built on this stack;
- containerd (in `make bench-peers`), over its gRPC API from Python (PyPI's `containerd`
  stubs; requirements-bench.lock), the same containers as metadata only (no snapshot).

The client is `http.client` on a kept-alive unix-socket connection (and grpcio's channel
for containerd): the cheapest Python can send with, and it does not count anyway.

W11: throughput under concurrency, from several client processes at once (so the client
is not the bottleneck): creates/s and gets/s at saturation, with the server's CPU over the
same seconds, for Cargohold and containerd under the same load.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import socket
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.run import Report, daemon, null_server, spec

NAMESPACE = "w10"
COUNT = 1000
LISTS = 50  # lists of all 1,000 per round: each costs the server milliseconds
OPERATIONS = ("nothing", "create", "get", "patch", "list 1,000", "delete")
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def labels(index: int) -> dict[str, str]:
    return {"app": f"app{index % 10}", "tier": "web", "index": str(index)}


SPEC = spec(["/bin/true"])


def cpu_seconds(pid: int) -> float:
    """The CPU time of all of `pid`'s threads, in nanoseconds' precision (/proc's schedstat;
    /proc/<pid>/stat counts 10 ms ticks, coarser than the null server's whole run)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


# --- the clients ---------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("cargohold")
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


class Side(Protocol):
    """One server's five operations, one call each."""

    def nothing(self, index: int) -> None: ...
    def create(self, index: int) -> None: ...
    def get(self, index: int) -> None: ...
    def patch(self, index: int) -> None: ...
    def list(self) -> None: ...
    def delete(self, index: int) -> None: ...
    def close(self) -> None: ...


class HTTPSide:
    """Cargohold's API over its unix socket; or the null server, sent the same requests, with
    `body_bytes` telling it how large an answer to give for each operation."""

    def __init__(self, socket_path: Path, body_bytes: dict[str, int] | None = None) -> None:
        self._connection = UnixHTTPConnection(str(socket_path))
        self._body_bytes = body_bytes

    def request(self, method: str, path: str, expected: int, operation: str,
                body: dict[str, Any] | None = None) -> bytes:
        headers = {"Cargohold-Namespace": NAMESPACE}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._body_bytes is not None:
            headers["Body-Bytes"] = str(self._body_bytes[operation])
            expected = 200
        self._connection.request(method, path, payload, headers)
        response = self._connection.getresponse()
        data = response.read()
        if response.status != expected:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return data

    def nothing(self, index: int) -> None:
        """A request the server does no work for: the floor of its own stack."""
        self.request("GET", "/healthz", 200, "nothing")

    def create(self, index: int) -> None:
        self.request("POST", "/containers", 201, "create", {"id": f"c{index}", "spec": SPEC, "labels": labels(index)})

    def get(self, index: int) -> None:
        self.request("GET", f"/containers/c{index}", 200, "get")

    def patch(self, index: int) -> None:
        self.request("PATCH", f"/containers/c{index}", 200, "patch", {"labels": {"tier": "db"}})

    def list(self) -> None:
        self.request("GET", "/containers", 200, "list 1,000")

    def delete(self, index: int) -> None:
        self.request("DELETE", f"/containers/c{index}", 204, "delete")

    def sizes(self) -> dict[str, int]:
        """Each operation's answer size, for the null server to answer as much."""
        self.create(COUNT)
        sizes = {
            "get": len(self.request("GET", f"/containers/c{COUNT}", 200, "get")),
            "patch": len(self.request("PATCH", f"/containers/c{COUNT}", 200, "patch", {"labels": {"tier": "db"}})),
        }
        sizes["create"] = sizes["get"]
        self.delete(COUNT)
        sizes["delete"] = 0
        sizes["nothing"] = len(self.request("GET", "/healthz", 200, "nothing"))
        sizes["list 1,000"] = COUNT * (sizes["get"] + 1) + 30  # the documents, commas, the page's envelope
        return sizes

    def close(self) -> None:
        self._connection.close()


class ContainerdSide:
    """containerd's Containers service over gRPC, metadata only, in namespace `w10`."""

    def __init__(self, address: Path) -> None:
        import grpc  # requirements-bench.lock: only the peers run needs them
        from containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
        from containerd.services.version.v1 import version_pb2_grpc
        from google.protobuf import any_pb2, empty_pb2, field_mask_pb2

        self._pb, self._any, self._mask, self._empty = containers_pb2, any_pb2, field_mask_pb2, empty_pb2
        self._channel = grpc.insecure_channel(f"unix://{address}")
        self._stub = containers_pb2_grpc.ContainersStub(self._channel)
        self._version = version_pb2_grpc.VersionStub(self._channel)
        self._metadata = (("containerd-namespace", NAMESPACE),)
        self._spec = any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(SPEC).encode())

    def nothing(self, index: int) -> None:
        """containerd's cheapest call: its version."""
        self._version.Version(self._empty.Empty())

    def create(self, index: int) -> None:
        pb = self._pb
        container = pb.Container(id=f"c{index}", labels=labels(index), spec=self._spec,
                                 runtime=pb.Container.Runtime(name="io.containerd.runc.v2"))
        self._stub.Create(pb.CreateContainerRequest(container=container), metadata=self._metadata)

    def get(self, index: int) -> None:
        self._stub.Get(self._pb.GetContainerRequest(id=f"c{index}"), metadata=self._metadata)

    def patch(self, index: int) -> None:
        pb = self._pb
        self._stub.Update(pb.UpdateContainerRequest(
            container=pb.Container(id=f"c{index}", labels={"tier": "db"}),
            update_mask=self._mask.FieldMask(paths=["labels.tier"])), metadata=self._metadata)

    def list(self) -> None:
        found = self._stub.List(self._pb.ListContainersRequest(), metadata=self._metadata)
        if len(found.containers) != COUNT:
            raise RuntimeError(f"containerd listed {len(found.containers)} containers, not {COUNT}")

    def delete(self, index: int) -> None:
        self._stub.Delete(self._pb.DeleteContainerRequest(id=f"c{index}"), metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()


# --- W10: CPU per operation ------------------------------------------------------------------


def round_of(side: Side, pid: int) -> dict[str, tuple[float, float]]:
    """One round: each operation 1,000 times (lists 50), as (server CPU ms/op, latency p50 ms)."""
    steps: list[tuple[str, int, Callable[[int], None]]] = [
        ("nothing", COUNT, side.nothing), ("create", COUNT, side.create), ("get", COUNT, side.get),
        ("patch", COUNT, side.patch),
        ("list 1,000", LISTS, lambda _: side.list()), ("delete", COUNT, side.delete),
    ]
    result = {}
    for name, count, call in steps:
        latencies = []
        before = cpu_seconds(pid)
        for index in range(count):
            started = time.perf_counter()
            call(index)
            latencies.append(time.perf_counter() - started)
        result[name] = (1000 * (cpu_seconds(pid) - before) / count, 1000 * statistics.median(latencies))
    return result


@dataclass
class Server:
    name: str
    pid: int
    connect: Callable[[], Side]
    note: str


def w10_rounds(servers: list[Server], rounds: int) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """`rounds` alternating rounds over the servers (the machine drifts): per server, per
    operation, each round's (CPU ms/op, p50 ms)."""
    found: dict[str, dict[str, list[tuple[float, float]]]] = {s.name: {op: [] for op in OPERATIONS} for s in servers}
    for server in servers:  # a warm-up round each: caches, the database's pages, JIT-less but allocators
        side = server.connect()
        round_of(side, server.pid)
        side.close()
    for _ in range(rounds):
        for server in servers:
            side = server.connect()
            for operation, figures in round_of(side, server.pid).items():
                found[server.name][operation].append(figures)
            side.close()
    return found


def report_w10(report: Report, servers: list[Server], found: dict[str, dict[str, list[tuple[float, float]]]],
               rounds: int) -> None:
    peer = "containerd" if "containerd" in found else None
    for operation in OPERATIONS:
        medians = {name: (statistics.median(c for c, _ in rows[operation]),
                          statistics.median(p for _, p in rows[operation])) for name, rows in found.items()}
        for server in servers:
            cpu, p50 = medians[server.name]
            ratio = round(cpu / medians[peer][0], 2) if peer and server.name != peer else None
            spread = ", ".join(f"{c:.3f}" for c, _ in found[server.name][operation])
            report.add("W10", f"{server.name}: {operation}, server CPU per op", "ms", round(cpu, 3),
                       round(medians[peer][0], 3) if ratio is not None and peer else None,
                       f"p50 latency {p50:.3f} ms; rounds {spread}; {server.note}"
                       + (f"; ratio to {peer}" if ratio is not None else ""))
    report.rows[-1]["note"] += f"; {rounds} rounds, median"


@asynccontextmanager
async def cargohold_and_null(work: Path) -> AsyncIterator[tuple[Server, Server]]:
    """A fresh daemon and the null server, answering sizes measured on the daemon."""
    async with daemon(work / "daemon") as d, null_server(work / "null") as null:
        probe = HTTPSide(d.socket)
        sizes = probe.sizes()
        probe.close()
        yield (Server("cargohold", d.process.pid, lambda: HTTPSide(d.socket), "a unix socket, http.client"),
               Server("null server", null.process.pid, lambda: HTTPSide(null.socket, sizes),
                      "the same requests, bodies as large (bench/null_server.py)"))


# --- W11: throughput from several client processes ---------------------------------------------


def _client_process(make: Callable[[], Side], operation: str, indexes: list[int], start: Any) -> None:
    side = make()
    start.wait()
    call = getattr(side, operation)
    for index in indexes:
        call(index)
    side.close()


def saturate(server: Server, operation: str, count: int, clients: int) -> tuple[float, float]:
    """`count` operations split over `clients` processes, all started together:
    (operations per second, the server's CPU in cores over those seconds)."""
    context = multiprocessing.get_context("fork")
    start = context.Event()
    processes = [context.Process(target=_client_process,
                                 args=(server.connect, operation, list(range(k, count, clients)), start))
                 for k in range(clients)]
    for process in processes:
        process.start()
    time.sleep(0.3)  # each has connected
    before, started = cpu_seconds(server.pid), time.perf_counter()
    start.set()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a W11 client of {server.name} failed ({process.exitcode})")
    elapsed = time.perf_counter() - started
    return count / elapsed, (cpu_seconds(server.pid) - before) / elapsed


def saturation(report: Report, servers: list[Server], clients: int, count: int = 4000) -> None:
    for server in servers:
        for operation in ("create", "get", "delete"):
            rate, cores = saturate(server, operation, count, clients)
            if operation == "delete":
                continue  # clears the namespace for the next round; not reported
            report.add("W11", f"{server.name}: {operation}s at saturation", "ops/s", round(rate), None,
                       f"{clients} client processes; server CPU {cores:.2f} cores "
                       f"({1000 * cores / rate:.3f} ms/op); {os.cpu_count()} cores on the machine")


async def run(report: Report, work: Path, rounds: int, containerd_address: Path | None = None,
        containerd_pid: int | None = None, clients: int = 4, w11: bool = True) -> None:
    """W10 (and W11 unless `w11` is false) against a fresh daemon and the null server, and
    containerd at `containerd_address` (its pid `containerd_pid`) when given."""
    async with cargohold_and_null(work) as (cargohold, floor):
        servers = [cargohold, floor]
        if containerd_address is not None and containerd_pid is not None:
            address = containerd_address
            servers.append(Server("containerd", containerd_pid, lambda: ContainerdSide(address),
                                  "gRPC from Python (grpcio), metadata only"))
        report_w10(report, servers, w10_rounds(servers, rounds), rounds)
        if w11:
            saturation(report, [s for s in servers if s is not floor], clients)
