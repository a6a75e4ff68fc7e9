"""Crash safety of snapshots, with a real `kill -9`.

A daemon runs as a subprocess (`cargohold serve` on a unix socket). It is SIGKILLed in
the middle of a tar import (the overlay or bind mount of the new snapshot live, the tar
half extracted) and in the middle of a prepare (native: while `cp -a` copies the parent),
then started again on the same root. What must hold after the restart: no half-made
snapshot is visible (no row, no event), the orphaned data directory and its mount are
gone, the name can be used again, and everything that was committed before the kill is
still there and usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import os
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.models import Mount
from app.snapshots.mounts import mount_all, mount_points_under, unmount
from app.snapshots.overlay import overlay_supported
from tests.conftest import wait_for
from tests.rootfs import write_busybox_tar

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
CARGOHOLD = REPO / ".venv" / "bin" / "cargohold"
BASE_URL = "http://cargohold"

BOTH = [
    pytest.param(
        "overlayfs",
        marks=pytest.mark.skipif(not overlay_supported(), reason="this kernel has no overlayfs"),
    ),
    "native",
]


def _require_root() -> None:
    problem = "not root" if os.geteuid() != 0 else None
    try:
        subprocess.run(["busybox", "true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        problem = "busybox is not installed (apt-get install busybox-static)"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"crash tests cannot run ({problem})")
    pytest.skip(f"crash tests need root (mounts) and busybox ({problem})")


# --- the daemon as a process -------------------------------------------------------


class DaemonProcess:
    """`cargohold serve` on `<tmp>/root`, `<tmp>/state`, `<tmp>/s.sock`; restartable."""

    def __init__(self, tmp: Path, snapshotter: str) -> None:
        self.tmp = tmp
        self.snapshotter = snapshotter
        self.root = tmp / "root"
        self.state = tmp / "state"
        self.sock = tmp / "s.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.started: list[subprocess.Popen[bytes]] = []
        self.strays: list[int] = []  # processes the daemon started that outlived it
        self._logs = 0

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots" / self.snapshotter

    @property
    def pid(self) -> int:
        assert self.process is not None, "the daemon is not running"
        return self.process.pid

    def data_dirs(self) -> set[str]:
        return {entry.name for entry in self.snapshots_dir.iterdir()} if self.snapshots_dir.is_dir() else set()

    def log_tail(self) -> str:
        log = self.tmp / f"daemon-{self._logs}.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    async def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self._logs += 1
        with open(self.tmp / f"daemon-{self._logs}.log", "wb") as log:
            self.process = subprocess.Popen(
                [
                    str(CARGOHOLD), "serve",
                    "--root", str(self.root), "--state", str(self.state), "--listen", f"unix://{self.sock}",
                    "--snapshotter", self.snapshotter, "--log-level", "warning",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.started.append(self.process)
        process = self.process

        async def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the daemon exited with {process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                async with self.client() as client:
                    return (await client.get("/healthz")).status_code == 200
            return False

        try:
            await wait_for(answers, "the daemon answers /healthz", 20, every=0.05)
        except AssertionError as error:
            raise AssertionError(f"{error}:\n{self.log_tail()}") from None

    def kill(self) -> None:
        """kill -9, and reap it."""
        process = self.process
        assert process is not None and process.poll() is None, "the daemon is not running"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL

    def stop_all(self) -> None:
        """SIGTERM every daemon this test started, SIGKILL what does not exit in 10 s."""
        for process in self.started:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        for pid in self.strays:
            if process_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def client(self) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=str(self.sock))
        return httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=30)


def plant_orphan(daemon: DaemonProcess, mount_source: Path) -> Path:
    """With the daemon down, make what a crash mid-prepare or mid-import leaves: a data dir
    no row owns, half-written, with a mount still live in it (here a bind of `mount_source`)."""
    orphan = daemon.snapshots_dir / uuid.uuid4().hex
    (orphan / "fs" / "etc").mkdir(parents=True)
    (orphan / "fs" / "etc" / "half-written").write_text("x")
    (orphan / "work").mkdir()
    (orphan / "mnt").mkdir()
    mount_all([Mount(type="bind", source=str(mount_source), options=["ro", "rbind"])], orphan / "mnt")
    assert (orphan / "mnt") in mounts_under(daemon.root)
    return orphan


def unmount_everything_under(path: Path) -> None:
    for point in mount_points_under(path):
        with contextlib.suppress(OSError):
            unmount(point)


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_root()
    return write_busybox_tar(tmp_path_factory.mktemp("crash-rootfs") / "busybox.tar")


@pytest.fixture
def daemon(tmp_path: Path, snapshotter: str) -> Iterator[DaemonProcess]:
    _require_root()
    process = DaemonProcess(tmp_path, snapshotter)
    try:
        yield process
    finally:
        try:
            process.stop_all()
        finally:
            unmount_everything_under(tmp_path)


# --- what is on the host -------------------------------------------------------------


def mounts_under(path: Path) -> dict[Path, str]:
    """Mount points at or below `path` -> their filesystem type (from mountinfo)."""
    prefix = str(path.resolve()).rstrip("/") + "/"
    found: dict[Path, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].replace("\\040", " ")
        if (point + "/").startswith(prefix):
            found[Path(point)] = fields[fields.index("-") + 1]
    return found


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...


def process_alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def copy_children(parent: int) -> list[int]:
    """Live `cp` processes whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None or fields[1] != str(parent) or fields[0] in ("Z", "X"):
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == "cp":
                found.append(int(entry.name))
    return found


# --- tars ------------------------------------------------------------------------------


def _regular(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    return info


def _directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = int(time.time())
    return info


def layer_tar(big: int = 4 << 20) -> bytes:
    """A layer: `layer/`, `layer/big` (random bytes), `layer/done`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.addfile(_directory("layer"))
        archive.addfile(_regular("layer/big", big), io.BytesIO(os.urandom(big)))
        archive.addfile(_regular("layer/done", 3), io.BytesIO(b"ok\n"))
    return buffer.getvalue()


def big_tree_tar(files: int = 8, size: int = 4_000_000, small: int = 2000) -> bytes:
    """A gzipped tree of ~32 MB (zeros: cheap to send, as slow as any to `cp -a`) and many
    small files, so a native prepare over it copies for a few hundred milliseconds."""
    zeros = bytes(size)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1) as compressed:
        with tarfile.open(fileobj=compressed, mode="w") as archive:
            archive.addfile(_directory("data"))
            for number in range(files):
                archive.addfile(_regular(f"data/blob-{number}", size), io.BytesIO(zeros))
            archive.addfile(_directory("data/small"))
            for number in range(small):
                content = f"{number}\n".encode()
                archive.addfile(_regular(f"data/small/{number}", len(content)), io.BytesIO(content))
    return buffer.getvalue()


async def stalled_body(data: bytes, chunk: int = 16 * 1024) -> AsyncIterator[bytes]:
    """`data` in small chunks, then nothing, ever: an upload stuck mid-stream."""
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]
        await asyncio.sleep(0)
    await asyncio.Event().wait()


# --- API helpers -------------------------------------------------------------------


async def import_tar(client: httpx.AsyncClient, name: str, body: bytes, parent: str | None = None) -> None:
    params = {"name": name} | ({"parent": parent} if parent else {})
    response = await client.post("/snapshots/import", params=params, content=body)
    assert response.status_code == 201, response.text


async def snapshot_keys(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/snapshots")
    assert response.status_code == 200, response.text
    return sorted(snapshot["key"] for snapshot in response.json()["snapshots"])


async def events_naming(client: httpx.AsyncClient, key: str) -> list[dict[str, Any]]:
    """Every stored event whose payload names snapshot `key` (checks the history answers)."""
    response = await client.get("/events/history", params={"limit": 1000})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    assert any(event["topic"] == "/snapshot/commit" for event in events), "history lost the committed imports"
    return [event for event in events if key in (event["event"].get("key"), event["event"].get("name"))]


async def abandon(request: asyncio.Task[httpx.Response]) -> None:
    """Drop a request whose daemon was killed: it must not have been answered."""
    if request.done():
        with contextlib.suppress(httpx.TransportError):
            response = request.result()
            raise AssertionError(f"the request was answered before the kill: {response.status_code} {response.text}")
        return
    # A write the kill cut short fails by itself within moments: let it, rather than cancel
    # it. Cancelling a write blocked on the socket races anyio's writer callback, which can
    # then set the result of the cancelled future (InvalidStateError in the test's loop).
    # A request still pending is stalled in its body, where cancelling is safe.
    await asyncio.wait([request], timeout=0.5)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError, httpx.TransportError):
        await request


async def assert_restart_cleans(daemon: DaemonProcess, orphan: Path, committed: set[str]) -> None:
    """After a restart: the orphan and every mount under root are gone; `committed` stay."""
    await daemon.start()
    left = sorted(entry.name for entry in orphan.iterdir()) if orphan.exists() else []
    assert not orphan.exists(), f"start-up left the orphaned data dir {orphan}: {left}"
    assert daemon.data_dirs() == committed, "start-up removed or kept the wrong data dirs"
    assert mounts_under(daemon.root) == {}, "start-up left mounts under the root"


# --- 1. import killed mid-stream -----------------------------------------------------------


@pytest.mark.parametrize("snapshotter", BOTH)
async def test_import_killed_mid_stream_leaves_no_snapshot_and_orphan_is_removed(
    daemon: DaemonProcess, busybox_tar: Path, snapshotter: str
) -> None:
    await daemon.start()
    layer = layer_tar()
    async with daemon.client() as client:
        await import_tar(client, "base", busybox_tar.read_bytes())
        committed = daemon.data_dirs()
        assert len(committed) == 1

        def in_progress() -> Path | None:
            if upload.done():
                raise AssertionError("the import ended before the kill")
            for name in daemon.data_dirs() - committed:
                data = daemon.snapshots_dir / name
                big = data / "fs" / "layer" / "big"
                # half-extracted, with the import's mount of the new snapshot live
                if big.exists() and big.stat().st_size > 0 and (data / "mnt") in mounts_under(daemon.root):
                    return data
            return None

        upload = asyncio.create_task(
            client.post(
                "/snapshots/import", params={"name": "half", "parent": "base"},
                content=stalled_body(layer[: len(layer) // 2]),
            )
        )
        try:
            orphan = await wait_for(in_progress, "the import is half-way, its snapshot mounted", 15, every=0.002)
            daemon.kill()
        finally:
            await abandon(upload)

    # The crash state is there: the test exercises what start-up must clean.
    assert orphan.is_dir()
    assert 0 < (orphan / "fs" / "layer" / "big").stat().st_size < 4 << 20, "the tar was not half-way"
    mounted = mounts_under(daemon.root)
    assert (orphan / "mnt") in mounted, f"the import's mount went with the daemon: {mounted}"
    if snapshotter == "overlayfs":
        assert mounted[orphan / "mnt"] == "overlay", mounted

    await assert_restart_cleans(daemon, orphan, committed)
    async with daemon.client() as client:
        assert await snapshot_keys(client) == ["base"]
        missing = await client.get("/snapshots/half")
        assert missing.status_code == 404, missing.text
        assert await events_naming(client, "half") == []
        await import_tar(client, "half", layer, parent="base")
        assert await snapshot_keys(client) == ["base", "half"]
        assert mounts_under(daemon.root) == {}


# --- 2. prepare killed ---------------------------------------------------------------------


@pytest.mark.parametrize("snapshotter", ["native"])
async def test_native_prepare_killed_while_copying_leaves_no_snapshot(
    daemon: DaemonProcess, snapshotter: str
) -> None:
    await daemon.start()
    async with daemon.client() as client:
        await import_tar(client, "big", big_tree_tar())
        committed = daemon.data_dirs()

        def copying() -> int | None:
            if prepare.done():
                raise AssertionError("the prepare ended before the kill")
            children = copy_children(daemon.pid)
            return children[0] if children else None

        prepare = asyncio.create_task(client.post("/snapshots", json={"key": "half", "parent": "big"}))
        try:
            copier = await wait_for(copying, "the native snapshotter's cp -a of the parent runs", 15, every=0.002)
            daemon.strays.append(copier)
            daemon.kill()
        finally:
            await abandon(prepare)

    # Killed mid-copy: the daemon's cp dies with it (parent-death signal), so nothing keeps
    # writing into the orphan that start-up is about to remove.
    await wait_for(lambda: not process_alive(copier), "the daemon's cp dies with it", within=10)
    orphans = daemon.data_dirs() - committed
    assert len(orphans) == 1, orphans
    orphan = daemon.snapshots_dir / orphans.pop()
    assert (orphan / "fs").is_dir()
    parent_files = sum(1 for _ in (daemon.snapshots_dir / committed_dir(daemon, committed) / "fs").rglob("*"))
    copied = sum(1 for _ in (orphan / "fs").rglob("*"))
    assert copied < parent_files, "the copy completed: the cp did not die with the daemon"

    await assert_restart_cleans(daemon, orphan, committed)
    async with daemon.client() as client:
        assert await snapshot_keys(client) == ["big"]
        missing = await client.get("/snapshots/half")
        assert missing.status_code == 404, missing.text
        assert await events_naming(client, "half") == []
        again = await client.post("/snapshots", json={"key": "half", "parent": "big"})
        assert again.status_code == 201, again.text
        assert await snapshot_keys(client) == ["big", "half"]


def committed_dir(daemon: DaemonProcess, committed: set[str]) -> str:
    (name,) = committed
    return name


# --- 3. committed data survives ------------------------------------------------------------


async def _look_inside(client: httpx.AsyncClient, key: str, target: Path) -> None:
    """Mount snapshot `key` on `target` as a runtime would, from GET /snapshots/{key}/mounts."""
    response = await client.get(f"/snapshots/{key}/mounts")
    assert response.status_code == 200, response.text
    mounts = [Mount.model_validate(item) for item in response.json()]
    assert mounts, "no mounts for an active snapshot"
    target.mkdir(exist_ok=True)
    await asyncio.to_thread(mount_all, mounts, target)


@pytest.mark.parametrize("snapshotter", BOTH)
async def test_committed_data_survives_kill_9_and_only_orphans_are_removed(
    daemon: DaemonProcess, busybox_tar: Path, snapshotter: str, tmp_path: Path
) -> None:
    """After import + prepare + container create, kill -9. A hand-made orphan (the state an
    overlayfs prepare killed between its mkdirs and its row would leave: too quick to hit
    with a real kill), with a bind mount of `base`'s own files in it, is planted while the
    daemon is down: start-up must remove it and nothing that a row owns."""
    look = tmp_path / "look"
    await daemon.start()
    async with daemon.client() as client:
        await import_tar(client, "base", busybox_tar.read_bytes())
        base_fs = daemon.snapshots_dir / daemon.data_dirs().pop() / "fs"
        prepared = await client.post("/snapshots", json={"key": "c1-rootfs", "parent": "base"})
        assert prepared.status_code == 201, prepared.text
        container = {
            "id": "c1", "snapshot_key": "c1-rootfs",
            "spec": {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["/bin/sh"]}},
        }
        created = await client.post("/containers", json=container)
        assert created.status_code == 201, created.text
        await _look_inside(client, "c1-rootfs", look)
        try:
            (look / "etc" / "written-before-the-kill").write_text("still here\n")
        finally:
            unmount(look)
        committed = daemon.data_dirs()
        assert len(committed) == 2
        daemon.kill()

    orphan = plant_orphan(daemon, base_fs)
    await assert_restart_cleans(daemon, orphan, committed)
    assert (base_fs / "bin" / "busybox").is_file(), "unmounting the orphan's bind mount harmed its source"
    async with daemon.client() as client:
        assert await snapshot_keys(client) == ["base", "c1-rootfs"]
        kinds = {s["key"]: s["kind"] for s in (await client.get("/snapshots")).json()["snapshots"]}
        assert kinds == {"base": "committed", "c1-rootfs": "active"}
        got = await client.get("/containers/c1")
        assert got.status_code == 200, got.text
        assert got.json()["snapshot_key"] == "c1-rootfs"
        await _look_inside(client, "c1-rootfs", look)
        try:
            assert (look / "bin" / "busybox").is_file()
            assert (look / "etc" / "written-before-the-kill").read_text() == "still here\n"
        finally:
            unmount(look)
        in_use = await client.delete("/snapshots/base")
        assert in_use.status_code == 409, in_use.text
        assert await events_naming(client, "base") != []
        again = await client.post("/snapshots", json={"key": "c2-rootfs", "parent": "base"})
        assert again.status_code == 201, again.text
