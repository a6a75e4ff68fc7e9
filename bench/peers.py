"""`make bench-peers`: W1, W3, W5 and W6 through Cargohold and through containerd, in one run.

Cargohold runs first (a `cargohold serve` subprocess, the workloads of bench/run.py, with
their floors: bare `runc run`, a bare eventfd). Then this harness starts a containerd of
its own (Debian's package) on private paths with a generated config: root, state, the
gRPC and ttrpc sockets and the opt plugin under a temporary directory, no CRI plugin,
snapshotter overlayfs, and every container's cgroup under `/cargohold-peers/<id>`. It is
driven with `ctr --address <socket> --namespace bench`: the same busybox layer, imported
as an OCI image (`ctr images import`, unpacked into overlayfs), runs the same workloads.
Afterwards it stops containerd and the shims it left, unmounts what is left under its
root, removes its cgroups, and fails loudly if anything is still there.

W6 (images): one local docker-registry (bench/images.py) serves both sides the same
images. Cargohold's pulls are bench/run.py's W6; containerd's are `ctr images pull
--plain-http` into overlayfs, with `ctr images rm --sync` (the image, then a synchronous
GC) between runs so that each downloads and unpacks everything again.

W7 (networking a task) and W8 (attach) run through Cargohold here and through Podman,
daemonless on private paths, in bench/podman.py. W9 (the `cargohold` CLI's `run --rm`
beside `ctr run --rm` and `podman run --rm`) is bench/client.py.

The table is printed and written to bench/results-peers.json. Shared, noisy machines:
read the ratios.

    python -m bench.peers [--runs 50] [--only W1,W3,W5,W6,W7,W8,W9] [--quick] [--pulls 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from app.images.unpack import chain_ids
from bench.images import (
    BenchImage,
    Layout,
    bench_registry,
    blob_bytes,
    build_layout,
    log_offset,
    missing_tools,
    reference,
)
from bench.run import (
    OOM_SCRIPT,
    Report,
    daemon,
    expect,
    ms,
    summary,
    w1_run_to_completion,
    w3_oom_notice,
    w5_fanout,
    w6_images,
    w6_pulls,
    write_results,
)
from tests.images.conftest import Registry
from tests.rootfs import write_busybox_tar

NAMESPACE = "bench"
IMAGE = "cargohold.local/bench/busybox:latest"
SNAPSHOTTER = "overlayfs"
CGROUP_PARENT = "cargohold-peers"  # each container's cgroup is /cargohold-peers/<id>
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6 puts shim sockets here, whatever its state dir
MEMORY_LIMIT = 32 * 1024 * 1024


# --- an OCI image of the busybox layer (there is no registry here) ------------------------------


def oci_platform() -> dict[str, str]:
    machine = platform.machine()
    return {"architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine), "os": "linux"}


def write_oci_archive(layer_tar: Path, destination: Path, name: str) -> Path:
    """An OCI image layout as a tar (oci-layout, index.json, blobs): one uncompressed layer,
    the same bytes Cargohold imports, named `name` through containerd's image-name annotation."""
    layer = layer_tar.read_bytes()

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    config = json.dumps({
        **oci_platform(),
        "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer),
                    "size": len(layer)}],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest),
                       "size": len(manifest), "platform": oci_platform(),
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}],
    }).encode()
    with tarfile.open(destination, "w") as archive:
        entries = [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", index)]
        entries += [(f"blobs/sha256/{digest(blob)[7:]}", blob) for blob in (layer, config, manifest)]
        for path, data in entries:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return destination


# --- containerd's events as `ctr events` prints them ----------------------------------------------

# "2026-11-29 02:55:49.153146656 +0000 UTC bench /tasks/oom {"container_id":"o1"}"
EVENT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d+))? ([+-]\d{4}) \S+ (\S+) (\S+) ?(.*)$")


@dataclass
class Event:
    at: float  # containerd's own timestamp, seconds since the epoch (its wall clock, as time.time())
    namespace: str
    topic: str
    payload: dict[str, Any]


def parse_event(line: str) -> Event | None:
    match = EVENT_LINE.match(line.strip())
    if match is None:
        return None
    stamp, fraction, offset, namespace, topic, payload = match.groups()
    seconds = datetime.strptime(f"{stamp} {offset}", "%Y-%m-%d %H:%M:%S %z").timestamp()
    seconds += int((fraction or "0").ljust(9, "0")[:9]) / 1e9
    return Event(seconds, namespace, topic, json.loads(payload) if payload else {})


# --- the host outside our directory: what a containerd run may leave behind -------------------------


def processes_mentioning(needle: str) -> dict[int, str]:
    """Live processes whose argv mentions `needle` (containerd, its shims, ctr, runc --root)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in argv:
            found[int(entry.name)] = argv.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def mountinfo() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of this mount namespace, in mount order."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        point = fields.split()[4]
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
        mounts.append((point, rest.split()[0]))
    return mounts


def mounts_under(base: Path) -> list[str]:
    prefix = str(base).rstrip("/") + "/"
    return [point for point, _ in mountinfo() if point == str(base) or point.startswith(prefix)]


def cgroup_dirs(name: str) -> list[Path]:
    """`name` in every cgroup hierarchy mounted (v1 controllers, the named ones, the unified one)."""
    return [Path(point) / name for point, kind in mountinfo()
            if kind in ("cgroup", "cgroup2") and (Path(point) / name).is_dir()]


def cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for directory in cgroup_dirs(name):
        for procs in directory.rglob("cgroup.procs"):
            try:
                pids.update(int(pid) for pid in procs.read_text().split())
            except OSError:
                continue
    return pids


def remove_cgroups(name: str) -> None:
    for directory in cgroup_dirs(name):
        for child in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                            reverse=True):
            child.rmdir()
        directory.rmdir()


def signal_and_wait(pids: Iterable[int], sig: int, seconds: float) -> None:
    pids = set(pids)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + seconds
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if alive(pid)}
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# --- containerd on private paths ----------------------------------------------------------------------


@dataclass
class Containerd:
    process: subprocess.Popen[bytes]
    base: Path
    address: Path
    version: str = ""

    def argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.address), "--namespace", NAMESPACE, *args]

    def ctr(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(self.argv(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    async def actr(self, *args: str) -> None:
        """ctr without blocking the loop (an event subscriber is being read meanwhile)."""
        process = await asyncio.create_subprocess_exec(*self.argv(*args), stdin=subprocess.DEVNULL,
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(process.communicate(), 120)
        if process.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {err.decode().strip()}")

    def run_flags(self, name: str) -> list[str]:
        """What keeps a task's state on our paths: runc's root, the stdio FIFOs, the cgroup."""
        return ["--snapshotter", SNAPSHOTTER, "--runc-root", str(self.base / "runc"),
                "--fifo-dir", str(self.base / "fifo"), "--cgroup", f"/{CGROUP_PARENT}/{name}"]

    async def subscribe(self, *filters: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*self.argv("events", *filters), stdin=subprocess.DEVNULL,
                                                    stdout=subprocess.PIPE)


def containerd_config(base: Path, address: Path) -> str:
    return f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
"""


@dataclass
class HostBefore:
    """What was on the host outside `base` before containerd started."""

    run_containerd: bool
    shim_sockets: set[str]
    var_lib_containerd: bool

    @classmethod
    def now(cls) -> HostBefore:
        sockets = set(os.listdir(SHIM_SOCKETS)) if SHIM_SOCKETS.is_dir() else set()
        return cls(SHIM_SOCKETS.parent.exists(), sockets, Path("/var/lib/containerd").exists())


@asynccontextmanager
async def containerd(base: Path) -> AsyncIterator[Containerd]:
    if cgroup_dirs(CGROUP_PARENT):  # an earlier run's: empty ones go, busy ones stop us
        if pids := cgroup_pids(CGROUP_PARENT):
            raise RuntimeError(f"cgroup /{CGROUP_PARENT} exists with processes in it {sorted(pids)}: "
                               "an earlier run left them")
        print(f"removing an earlier run's empty cgroup /{CGROUP_PARENT}", file=sys.stderr)
        remove_cgroups(CGROUP_PARENT)
    if processes_mentioning(str(base)):
        raise RuntimeError(f"processes already mention {base}")
    before = HostBefore.now()
    base.mkdir(parents=True)
    address = base / "containerd.sock"
    (base / "config.toml").write_text(containerd_config(base, address))
    log = open(base / "containerd.log", "ab")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdin=subprocess.DEVNULL,
                               stdout=log, stderr=log)
    handle = Containerd(process, base, address)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start; see {base / 'containerd.log'}")
            if address.exists():
                check = subprocess.run(handle.argv("version"), capture_output=True, text=True)
                if check.returncode == 0:
                    server = check.stdout.split("Server:", 1)[-1]
                    handle.version = next((line.split(":", 1)[1].strip() for line in server.splitlines()
                                           if line.strip().startswith("Version:")), "")
                    break
            await asyncio.sleep(0.05)
        yield handle
    finally:
        try:
            stop_containerd(handle, before)
        finally:
            log.close()


def stop_containerd(handle: Containerd, before: HostBefore) -> None:
    """Stop what containerd started, by pid, clean its traces off the host, and check."""
    base = str(handle.base)
    if handle.process.poll() is None:  # let containerd tear down what it still knows of
        for task in handle.ctr("tasks", "ls", "-q", check=False).split():
            handle.ctr("tasks", "delete", "--force", task, check=False)
        for container in handle.ctr("containers", "ls", "-q", check=False).split():
            handle.ctr("containers", "delete", container, check=False)
    handle.process.send_signal(signal.SIGTERM)
    try:
        handle.process.wait(30)
    except subprocess.TimeoutExpired:
        handle.process.kill()
        handle.process.wait()
    # Shims outlive containerd by design: each names our socket in its argv.
    leftover = processes_mentioning(base)
    if leftover:
        print(f"stopping {len(leftover)} process(es) containerd left: {sorted(leftover)}", file=sys.stderr)
        signal_and_wait(leftover, signal.SIGTERM, 10)
        signal_and_wait([pid for pid in leftover if alive(pid)], signal.SIGKILL, 5)
    strays = cgroup_pids(CGROUP_PARENT)  # container processes whose shim is gone
    if strays:
        signal_and_wait(strays, signal.SIGKILL, 5)
    for point in reversed(mounts_under(handle.base)):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True)
    time.sleep(0.1)  # the kernel drops emptied cgroups' last references asynchronously
    try:
        remove_cgroups(CGROUP_PARENT)
    except OSError as error:
        print(f"could not remove /{CGROUP_PARENT}: {error}", file=sys.stderr)
    new_sockets = (set(os.listdir(SHIM_SOCKETS)) if SHIM_SOCKETS.is_dir() else set()) - before.shim_sockets
    foreign = {pid: argv for pid, argv in processes_mentioning("containerd").items() if base not in argv}
    if not foreign:  # no other containerd could own a new shim socket
        for name in new_sockets:
            (SHIM_SOCKETS / name).unlink(missing_ok=True)
    if not before.run_containerd:
        for directory in (SHIM_SOCKETS, SHIM_SOCKETS.parent):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
    left_behind(handle.base, before, foreign)


def left_behind(base: Path, before: HostBefore, foreign: dict[int, str]) -> None:
    problems = []
    if processes := processes_mentioning(str(base)):
        problems.append(f"processes: {processes}")
    if pids := cgroup_pids(CGROUP_PARENT):
        problems.append(f"processes in /{CGROUP_PARENT}: {sorted(pids)}")
    if cgroups := cgroup_dirs(CGROUP_PARENT):
        problems.append(f"cgroups: {[str(p) for p in cgroups]}")
    if mounts := mounts_under(base):
        problems.append(f"mounts: {mounts}")
    sockets = (set(os.listdir(SHIM_SOCKETS)) if SHIM_SOCKETS.is_dir() else set()) - before.shim_sockets
    if sockets and not foreign:
        problems.append(f"shim sockets: {sorted(sockets)} in {SHIM_SOCKETS}")
    if not before.run_containerd and SHIM_SOCKETS.parent.exists() and not foreign:
        problems.append(f"{SHIM_SOCKETS.parent} (not there before)")
    if not before.var_lib_containerd and Path("/var/lib/containerd").exists():
        problems.append("/var/lib/containerd (not there before)")
    if problems:
        raise RuntimeError("bench-peers left these behind:\n  " + "\n  ".join(problems))
    if sockets:
        print(f"note: {len(sockets)} new socket(s) in {SHIM_SOCKETS}; another containerd runs "
              f"({sorted(foreign)}), so they were left alone", file=sys.stderr)


# --- the workloads through containerd -------------------------------------------------------------------


def timed_ctr(c: Containerd, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(c.argv(*args), check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=120)
    return time.perf_counter() - started


# ctr run --rm, as containerd publishes it: each phase ends with the event named
W1_PHASES = (
    ("/snapshot/prepare", ""),
    ("/containers/create", "container create"),
    ("/tasks/create", "task create (shim, mount, runc create)"),
    ("/tasks/start", "start"),
    ("/tasks/exit", "run to exit"),
    ("/tasks/delete", "task delete (shim gone)"),
    ("/containers/delete", "delete container (+ snapshot)"),
)


async def w1_containerd(c: Containerd, runs: int, floor: dict[str, float] | None, report: Report) -> list[float]:
    """`ctr run --rm /bin/true`, one ctr process per run, timed from spawn to exit; beside it
    containerd's own phases from its event timestamps, and what a ctr process costs alone."""
    events_file = c.base / "w1-events.txt"
    with open(events_file, "wb") as sink:  # a file, not a pipe: nobody has to read it meanwhile
        subscriber = subprocess.Popen(c.argv("events", f"namespace=={NAMESPACE}"), stdin=subprocess.DEVNULL,
                                      stdout=sink)
        try:
            totals = []
            for index in range(runs + 3):
                name = f"w1-{index}"
                seconds = timed_ctr(c, "run", "--rm", *c.run_flags(name), IMAGE, name, "/bin/true")
                if index >= 3:  # the first three warm up
                    totals.append(ms(seconds))
            await asyncio.sleep(0.2)
        finally:
            subscriber.terminate()
            subscriber.wait()
    stamps: dict[str, dict[str, float]] = {}
    for line in events_file.read_text().splitlines():
        event = parse_event(line)
        if event is not None:
            name = event.payload.get("container_id") or event.payload.get("id") or event.payload.get("key", "")
            stamps.setdefault(name, {}).setdefault(event.topic, event.at)
    phases: dict[str, list[float]] = {label: [] for _, label in W1_PHASES[1:]}
    spans = []
    for index in range(3, runs + 3):
        seen = stamps.get(f"w1-{index}", {})
        if all(topic in seen for topic, _ in W1_PHASES):
            for (before, _), (topic, label) in pairwise(W1_PHASES):
                phases[label].append(ms(seen[topic] - seen[before]))
            spans.append(ms(seen[W1_PHASES[-1][0]] - seen[W1_PHASES[0][0]]))
    alone = [ms(timed_ctr(c, "version")) for _ in range(runs)]
    report.add("W1", "containerd: ctr run --rm", "ms", summary(totals), floor,
               f"{runs} sequential runs, ctr spawn to exit")
    if spans:
        report.add("W1", "  containerd's own span", "ms", summary(spans), None,
                   "event times: /snapshot/prepare -> /containers/delete")
        for label, samples in phases.items():
            report.add("W1", f"  phase: {label}", "ms", summary(samples))
    report.add("W1", "  a ctr process alone (ctr version)", "ms", summary(alone), None,
               "spawn, connect, one RPC, exit")
    return totals


async def w3_containerd(c: Containerd, runs: int, floor: dict[str, float] | None, report: Report) -> list[float]:
    """OOM: a long-running `ctr events` subscriber; `ctr run -d --memory-limit 32 MiB` of the
    OOM script; from that ctr returning (start done) to the /tasks/oom line read."""
    subscriber = await c.subscribe('topic=="/tasks/oom"', 'topic=="/tasks/start"', 'topic=="/namespaces/update"')
    assert subscriber.stdout is not None
    stdout = subscriber.stdout
    loop = asyncio.get_running_loop()
    seen: dict[str, asyncio.Future[float]] = {f"w3-{i}": loop.create_future() for i in range(runs)}
    ready: asyncio.Future[None] = loop.create_future()
    started_at: dict[str, float] = {}  # containerd's time of /tasks/start
    from_start_event: list[float] = []

    async def read() -> None:
        while line := await stdout.readline():
            at = time.perf_counter()
            event = parse_event(line.decode())
            if event is None:
                continue
            if event.topic == "/namespaces/update" and not ready.done():
                ready.set_result(None)
            name = event.payload.get("container_id", "")
            if event.topic == "/tasks/start":
                started_at[name] = event.at
            if event.topic == "/tasks/oom" and name in seen and not seen[name].done():
                seen[name].set_result(at)
                if name in started_at:
                    from_start_event.append(ms(time.time() - started_at[name]))

    reader = asyncio.create_task(read())
    try:
        for attempt in range(100):  # subscribed once a marker event comes through
            await c.actr("namespaces", "label", NAMESPACE, f"bench-ready={attempt}")
            try:
                await asyncio.wait_for(asyncio.shield(ready), 0.2)
                break
            except TimeoutError:
                continue
        samples = []
        for index in range(runs):
            name = f"w3-{index}"
            await c.actr("run", "-d", "--null-io", "--memory-limit", str(MEMORY_LIMIT), *c.run_flags(name),
                         IMAGE, name, "sh", "-c", OOM_SCRIPT)
            started = time.perf_counter()
            samples.append(ms(await asyncio.wait_for(seen[name], 30) - started))
            await c.actr("tasks", "delete", "--force", name)
            await c.actr("containers", "delete", name)
    finally:
        subscriber.terminate()
        await subscriber.wait()
        reader.cancel()
    report.add("W3", "containerd: OOM -> /tasks/oom at ctr events", "ms", summary(samples), floor,
               f"{runs} runs; from `ctr run -d` returning")
    if from_start_event:
        report.add("W3", "  containerd: /tasks/start event -> /tasks/oom read", "ms", summary(from_start_event), floor,
                   "containerd's event time against ours")
    return samples


async def w5_containerd(c: Containerd, rootfs: Path, report: Report) -> list[float]:
    """20 `ctr events` subscribers; 100 containers created (one `ctr containers create
    --rootfs` each: metadata only, as in Cargohold's W5) then deleted by one `ctr containers
    delete` of all 100 (sequential RPCs from one client, as Cargohold's W5 does over one
    connection); from that ctr's exit to every subscriber having all 200 events."""
    subscribers, containers = 20, 100
    expected = 2 * containers
    names = {f"w5-{i}" for i in range(containers)}
    counts = [0] * subscribers
    done_at: list[float | None] = [None] * subscribers
    published_to_read: list[float] = []  # containerd's clock at publish -> ours at read, the last event
    ready = [asyncio.Event() for _ in range(subscribers)]
    processes = [await c.subscribe(f'namespace=={NAMESPACE},topic~="^/containers/"') for _ in range(subscribers)]

    async def read(index: int, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            event = parse_event(line.decode())
            if event is None:
                continue
            name = event.payload.get("id", "")
            if name.startswith("ready-"):
                ready[index].set()
            elif name in names:
                counts[index] += 1
                if counts[index] == expected:
                    done_at[index] = time.perf_counter()
                    published_to_read.append(ms(time.time() - event.at))
                    return

    readers = [asyncio.create_task(read(i, p)) for i, p in enumerate(processes)]
    try:
        markers = []
        for attempt in range(100):  # every subscriber is subscribed once it has seen a marker
            markers.append(f"ready-{attempt}")
            await c.actr("containers", "create", "--rootfs", str(rootfs), markers[-1], "/bin/true")
            try:
                await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), 0.5)
                break
            except TimeoutError:
                continue
        await c.actr("containers", "delete", *markers)
        for index in range(containers):
            await c.actr("containers", "create", "--rootfs", str(rootfs), f"w5-{index}", "/bin/true")
        await c.actr("containers", "delete", *(f"w5-{i}" for i in range(containers)))
        last_ack = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*readers), 60)
    finally:
        for process in processes:
            process.terminate()
            await process.wait()
        for task in readers:
            task.cancel()
    lag = [ms((at or last_ack) - last_ack) for at in done_at]
    report.add("W5", f"containerd: {subscribers} ctr events done after last ack", "ms", summary(lag), None,
               f"{expected} events each; ack: the deleting ctr's exit")
    report.add("W5", "  containerd: last event published -> read", "ms", summary(published_to_read), None,
               "each subscriber; containerd's event time against ours")
    return lag


def containerd_has(c: Containerd, image: BenchImage) -> list[str]:
    """What containerd still holds of `image`: its blobs in the content store, its chain snapshots."""
    content = set(c.ctr("content", "ls", "-q").split())
    snapshots = {line.split()[0] for line in c.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").splitlines()[1:]
                 if line.strip()}
    blobs = [blob.digest for blob in (image.manifest, image.config, *image.layers) if blob.digest in content]
    return blobs + [chain for chain in chain_ids([layer.diff_id for layer in image.layers]) if chain in snapshots]


def containerd_reclaim(c: Containerd, ref: str, image: BenchImage) -> None:
    """`ctr images rm --sync` (the image, then a synchronous GC); what GC kept is removed by hand."""
    c.ctr("images", "rm", "--sync", ref)
    if left := containerd_has(c, image):
        print(f"containerd's GC kept {len(left)} blob(s)/snapshot(s) of {ref}; removing them", file=sys.stderr)
        for chain in reversed(chain_ids([layer.diff_id for layer in image.layers])):
            c.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "rm", chain, check=False)
        c.ctr("content", "rm", *left, check=False)
    if left := containerd_has(c, image):
        raise RuntimeError(f"containerd still holds {left} of {ref}: the next pull would not be cold")


async def w6_containerd(c: Containerd, registry: Registry, layout: Layout, runs: int,
                        floor: dict[str, float] | None, report: Report) -> list[float]:
    """`ctr images pull --plain-http` of big (ctr fetches; containerd unpacks into overlayfs),
    timed from spawn to exit, the image and all it reached removed between runs; then the
    bytes a pull of shared downloads with big's layers there."""
    big, shared = layout.images["big"], layout.images["shared"]
    big_ref, shared_ref = reference(registry, "big"), reference(registry, "shared")

    def pull(ref: str) -> float:
        """ctr's progress lines (stdout) and its log lines (stderr) are kept from the table."""
        started = time.perf_counter()
        done = subprocess.run(c.argv("images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER, ref),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"ctr images pull {ref}: {done.stderr.strip()}")
        return time.perf_counter() - started

    samples = []
    for index in range(runs + 1):  # the first warms up
        seconds = pull(big_ref)
        if index > 0:
            samples.append(ms(seconds))
        containerd_reclaim(c, big_ref, big)
    pull(big_ref)
    since = log_offset(registry)
    shared_seconds = pull(shared_ref)
    sent = blob_bytes(registry, since)
    c.ctr("images", "rm", "--sync", shared_ref, big_ref)
    new_layers = [layer for layer in shared.layers if layer not in big.layers]
    downloaded = sum(size for key, size in sent.items() if not key.startswith("manifest "))
    report.add("W6", f"containerd: ctr images pull, 3 layers, {big.size / 2**20:.0f} MiB gzip", "ms",
               summary(samples), floor, f"{runs} cold pulls (ctr images rm --sync between); spawn to exit")
    report.add("W6", "  containerd: second image, 2 of 3 layers shared: blob bytes", "B", downloaded, None,
               f"expected {shared.config.size + sum(layer.size for layer in new_layers):,}; "
               f"pull + unpack {ms(shared_seconds):.0f} ms")
    return samples


# --- the run ------------------------------------------------------------------------------------------------


def tag(report: Report, since: int, who: str) -> dict[str, float] | None:
    """Name the rows a bench/run.py workload added; return the floor it measured, if any."""
    floor = None
    for row in report.rows[since:]:
        if not row["metric"].startswith(" "):
            row["metric"] = f"{who}: {row['metric']}"
        if isinstance(row["floor"], dict) and floor is None:
            floor = row["floor"]
    return floor


def headline(report: Report, since: int, who: str) -> dict[str, float] | None:
    for row in report.rows[since:]:
        if row["metric"].startswith(f"{who}:") and isinstance(row["value"], dict):
            value: dict[str, float] = row["value"]
            return value
    return None


def compare(report: Report, workload: str, cargohold: dict[str, float] | None,
            peer: dict[str, float] | None) -> None:
    if cargohold and peer and peer["p50"] > 0:
        report.add(workload, "cargohold p50 / containerd p50", "x", round(cargohold["p50"] / peer["p50"], 2), None,
                   "below 1: Cargohold is faster")


def tool_version(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout else ""


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="W1 runs (W3 runs 10, 3 with --quick)")
    parser.add_argument("--only", default="W1,W3,W5,W6,W7,W8,W9,W10,W11")
    parser.add_argument("--rounds", type=int, default=3, help="W10's alternating rounds (1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer W3 runs and a 10 MiB W6 image, for a smoke run")
    parser.add_argument("--pulls", type=int, default=7, help="W6's cold pulls (3 with --quick)")
    args = parser.parse_args(argv)
    chosen = set(args.only.upper().split(","))
    if os.geteuid() != 0:
        raise SystemExit("bench-peers runs containers: run it as root")
    for binary in ("runc", "conmon", "busybox", "containerd", "ctr", "containerd-shim-runc-v2", "umount"):
        if shutil.which(binary) is None:
            raise SystemExit(f"bench-peers needs {binary}: `make bench-peers` installs it (as root)")
    if "W6" in chosen and (missing := missing_tools()):
        raise SystemExit(f"W6 needs {', '.join(missing)}: `make bench-peers` installs them (as root)")
    if chosen & {"W7", "W8", "W9"} and shutil.which("podman") is None:
        raise SystemExit("W7, W8 and W9 need podman: `make bench-peers` installs it (as root)")
    oom_runs = 3 if args.quick else 10
    load_before = os.getloadavg()[0]
    report = Report()
    found: dict[str, dict[str, dict[str, float] | None]] = {}
    work = Path(tempfile.mkdtemp(prefix="cargohold-peers-"))
    versions: dict[str, str] = {}
    failed = True
    registries = contextlib.ExitStack()  # W6's registry serves both sides; stopped by pid at the end
    try:
        tar = write_busybox_tar(work / "busybox.tar")
        registry: Registry | None = None
        layout: Layout | None = None
        if "W6" in chosen:
            layout = build_layout(work / "w6-layout", args.quick)
            registry = registries.enter_context(bench_registry(work / "w6-registry", layout))
        async with daemon(work / "d") as d:
            async with d.client() as client:
                await expect(client.post("/snapshots/import?name=busybox", content=tar.read_bytes()), 201)
            workloads: dict[str, Callable[[], Awaitable[None]]] = {
                "W1": lambda: w1_run_to_completion(d, work, tar, args.runs, report),
                "W3": lambda: w3_oom_notice(d, work, tar, oom_runs, report),
                "W5": lambda: w5_fanout(d, report),
            }
            if registry is not None and layout is not None:
                w6_registry, w6_layout = registry, layout

                async def w6() -> None:
                    await w6_images(work / "w6", w6_registry, w6_layout, w6_pulls(args), report)

                workloads["W6"] = w6

            async def w7() -> None:  # bench/networking.py; Podman's side: bench/podman.py, below
                from bench.networking import w7_networking

                await w7_networking(d, args.runs, report)

            async def w8() -> None:  # bench/attach.py
                from bench.attach import w8_attach

                await w8_attach(d, report, args.quick)

            async def w9() -> None:  # bench/client.py: the CLI beside ctr and podman, all three in there
                from bench.client import w9_client

                await w9_client(d, work, tar, args.runs, report)

            workloads |= {"W7": w7, "W8": w8, "W9": w9}
            for workload, run in workloads.items():
                if workload in chosen:
                    since = len(report.rows)
                    await run()
                    floor = tag(report, since, "cargohold")
                    found[workload] = {"floor": floor, "cargohold": headline(report, since, "cargohold")}
        rootfs = work / "w5-rootfs"  # W5 containers are metadata only; they never run
        rootfs.mkdir()
        async with containerd(work / "containerd") as c:
            versions["containerd"] = c.version
            archive = write_oci_archive(tar, work / "busybox-oci.tar", IMAGE)
            c.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(archive))
            if "W1" in chosen:
                peer = summary(await w1_containerd(c, args.runs, found["W1"]["floor"], report))
                compare(report, "W1", found["W1"]["cargohold"], peer)
            if "W3" in chosen:
                peer = summary(await w3_containerd(c, oom_runs, found["W3"]["floor"], report))
                compare(report, "W3", found["W3"]["cargohold"], peer)
            if "W5" in chosen:
                peer = summary(await w5_containerd(c, rootfs, report))
                compare(report, "W5", found["W5"]["cargohold"], peer)
            if registry is not None and layout is not None:
                peer = summary(await w6_containerd(c, registry, layout, w6_pulls(args), found["W6"]["floor"],
                                                   report))
                compare(report, "W6", found["W6"]["cargohold"], peer)
            if chosen & {"W10", "W11"}:  # bench/requests.py: a fresh daemon, the null server, containerd over gRPC
                from bench.requests import run as w10_w11

                await w10_w11(report, work / "w10", 1 if args.quick else args.rounds, c.address, c.process.pid,
                              w11="W11" in chosen)
        if chosen & {"W7", "W8"}:  # Podman on private paths (bench/podman.py)
            from bench.podman import podman_peers

            versions["podman"] = podman_peers(work / "podman", tar, chosen, args.runs, args.quick, found, report)
        failed = False
    finally:
        registries.close()
        if mounts_under(work):
            print(f"left {work} in place: mounts remain under it", file=sys.stderr)
        elif failed:
            print(f"left {work} in place for its logs (d/daemon.log, containerd/containerd.log)", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    order = {"W1": 1, "W3": 3, "W5": 5, "W6": 6, "W7": 7, "W8": 8, "W9": 9, "W10": 10, "W11": 11}
    report.rows.sort(key=lambda row: order.get(row["workload"], 9))  # stable: each workload's rows together
    report.print()
    versions["runc"] = tool_version("runc", "--version")
    versions["ctr"] = tool_version("ctr", "--version")
    write_results("results-peers.json", "make bench-peers", report,
                  {"load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]},  # before, after
                  versions=versions)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
